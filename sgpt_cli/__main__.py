from sgpt_cli.term.app import main

if __name__ == "__main__":
    main()
