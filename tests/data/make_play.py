"""Writes tests/data/play.txt (python tests/data/make_play.py tests/data/play.txt): an original
pseudo-Shakespeare play script, not taken from the corpus, that covers every character of
tiny-shakespeare's alphabet in the corpus's layout. The tests train their tiny models on it."""
import random, sys

SPEAKERS = ["ROMEO", "JULIET", "First Citizen", "Second Citizen", "MENENIUS", "KING RICHARD III",
            "QUEEN ELIZABETH", "BUCKINGHAM", "HAMLET", "LADY CAPULET", "Nurse", "BRUTUS", "ALL",
            "KING EDWARD IV", "3 KING HENRY VI", "Servant", "GLOUCESTER", "YORK", "ZANTHO", "Xantippe"]
LINES = """But soft, what brightness breaks upon the wall?
O, gentle lord, the morning calls us hence.
Come, come; we jest too long, and time is short.
Good night, good night! parting is a quiet grief.
Zounds, sir, the king is come, and you abed?
Quick, bring the torches; let the lamps be lit.
Why dost thou vex me with thy idle tongue?
Jove keep thee, cousin, from a bitter end.
Fie, fie! the bell hath struck, and none is here.
Never was heard a tale so full of woe.
I pray you, sir, what news from Mantua?
Yet I must speak, though all the world be deaf.
Hark, how the lark doth sing against the sun!
Exeunt all but Brutus and the boy.
Upon my life, the duke doth love you well.
Kneel not to me, but to the crown of York.
What, ho! Apothecary! come, be quick.
Lend me your hands, and we will bear him out.
My lord, the gates are shut; the town is sleeping.
Away, away! the watch is at the door.
Thy zeal, good friend, outruns thy wisdom far.
O villain, villain, smiling, damned villain!
Peace, peace; the queen doth weep, and so do I.
We are but men, and men must bear their lot.
How now, my masters? whither go you thus?
Be bold, be brave, and let no coward fear
Command the hand that holds the sword of justice.
Dear heart, I swear by yonder blessed moon,
That tips with silver all these fruit-tree tops,
I love thee more than words can wield the matter.
Is this a dagger which I see before me?
Go, get thee gone, and trouble me no more.
Ay, marry, sir, and that is very true.
Then let it be; the rest is in God's hands.
Farewell, fair lady; think on me sometimes.
Sweet Kate, thou art the prettiest Kate in Christendom.
Jack, the knave, hath stol'n my purse away.
I'll follow thee, and make a heaven of hell.
Xantippe scolds, and all the house is quiet.
Oxford, Norfolk, Derby: bid them arm with speed.
Lo, here the quarrel, and the cause of it.
Question not my faith; it is as fixed as stars.
Vouchsafe, dread sovereign, to hear me speak.
Where is the crown? who took it from my pillow?
Rich gifts wax poor when givers prove unkind.
These three, and all the rest, &c., stand by.
A thousand crowns, my lord; $3 would not buy it now.
Uncle, your grace is welcome to the court.
Did my heart love till now? forswear it, sight!
Fetch me a cup of sack; my throat is dry.
Hence, bashful cunning, and prompt me, plain and holy innocence!
Gentle Juliet, hark: the jay cries in the wood.
Mark me, Hamlet; I am thy father's spirit.
Each one of you shall have a crown of gold.
Knock, knock! who's there, in the name of Beelzebub?
Old Capulet is come; make way, make way!
Zeal and duty bid me speak, though you frown.
If music be the food of love, play on.
Now is the winter of our discontent.
Quoth he, the sky is clear, yet rain will come.
Very well, sir; I'll do as you command.
Break, heart; poor bankrupt, break at once!
Doubt thou the stars are fire; doubt truth to be a liar.
Nay, but hear me: the jest is not yet done.
Tut, man, one fire burns out another's burning.
Yonder comes the prince, with all his train.""".split("\n")

def main(out, target=36000):
    rng = random.Random(1599)
    parts, size = [], 0
    while size < target:
        speaker = rng.choice(SPEAKERS)
        body = [rng.choice(LINES) for _ in range(rng.randint(1, 6))]
        speech = speaker + ":\n" + "\n".join(body) + "\n\n"
        parts.append(speech)
        size += len(speech)
    with open(out, "w", encoding="utf-8") as f:
        f.write("".join(parts)[:-1])

main(sys.argv[1])
