// The play page of `sgpt serve`: a scene the model continues through /v1/completions (streamed,
// server-sent events read from fetch), what it believed of each character (logprobs), and the
// settings the server declares (GET /v1/sgpt/props: ranges, defaults and heat bins are never
// written here). Text from the model or the server reaches the page only as text nodes.
"use strict";

const $ = (id) => document.getElementById(id);
const store = { scene: "sgpt.scene", settings: "sgpt.settings", heat: "sgpt.heat", key: "sgpt.key" };
const TOP = 5; // alternatives asked for each character when heat is on
const SPEAKER = /^[A-Z][A-Za-z'\-]*(?: [A-Z][A-Za-z'\-]*){0,3}:$/; // chat_session.SPEAKER_LINE

const state = {
  props: null,
  text: "",
  info: [],        // per character of text: null (written) or {p, top: [[char, p]...] | null, seed}
  running: null,   // {ctl} while a stream runs
  lastRun: null,   // {start, seed}: what "3 more like this" redoes
  mode: "edit",
  sel: -1,         // the character whose alternatives the tip shows
  pinned: false,   // the tip was asked for (a click, the arrow keys): hovering does not replace it
  alts: null,      // "3 more": [{seed, text, info, finish}]
  lineEls: [],
  lineStarts: [],
};

// --- errors, the key ----------------------------------------------------------------------------

class Fail extends Error {}

function showError(message) {
  const el = $("error");
  el.textContent = String(message).split("\n")[0];
  el.title = el.textContent;
  el.hidden = false;
}

function clearError() { $("error").hidden = true; }

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem(store.key);
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function api(path, options = {}) {
  let res;
  try {
    res = await fetch(path, { ...options, headers: headers() });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new Fail("the server did not answer (" + e.message + "); is `sgpt serve` still running?");
  }
  if (res.ok) return res;
  let message = res.status + " " + res.statusText;
  try {
    const body = await res.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (e) { /* not JSON: the status says it */ }
  if (res.status === 401) {
    sessionStorage.removeItem(store.key);
    $("key-form").hidden = false;
    $("key").focus();
  }
  throw new Fail(message);
}

// --- settings, from the server's declarations --------------------------------------------------------

function saved() {
  try { return JSON.parse(localStorage.getItem(store.settings) || "{}") || {}; } catch (e) { return {}; }
}

function fieldId(name) { return "set-" + name; }

function buildSettings(settings) {
  const fields = $("fields");
  fields.replaceChildren();
  const values = saved();
  for (const s of settings) {
    const box = document.createElement("div");
    box.className = "field";
    const label = document.createElement("label");
    label.htmlFor = fieldId(s.name);
    label.textContent = s.name;
    let input;
    if (s.kind === "bool") {
      input = document.createElement("input");
      input.type = "checkbox";
    } else if (s.repeat) {
      input = document.createElement("textarea");
      input.rows = 2;
      input.placeholder = "one per line; \\n is a line break";
    } else {
      input = document.createElement("input");
      input.type = s.kind === "text" ? "text" : "number";
      if (s.low !== null) input.min = s.zero ? 0 : s.low;
      if (s.high !== null) input.max = s.high;
      input.step = s.kind === "int" ? 1 : "any";
      if (s.none) input.placeholder = s.none;
    }
    input.id = fieldId(s.name);
    input.title = s.help;
    const help = document.createElement("small");
    help.textContent = s.help + " Valid: " + s.rule + ".";
    box.append(label, input, help);
    fields.append(box);
    setField(s, s.name in values ? values[s.name] : s.default);
    input.addEventListener("change", keepSettings);
  }
}

function setField(s, value) {
  const input = $(fieldId(s.name));
  if (s.kind === "bool") input.checked = !!value;
  else if (s.repeat) input.value = (value || []).map((v) => v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/\t/g, "\\t")).join("\n");
  else input.value = value === null || value === undefined ? "" : String(value);
}

function unescape(text) {
  return text.replace(/\\(n|t|\\)/g, (m, c) => (c === "n" ? "\n" : c === "t" ? "\t" : "\\"));
}

function readSettings() {
  const out = {};
  for (const s of state.props.settings) {
    const input = $(fieldId(s.name));
    if (s.kind === "bool") out[s.name] = input.checked;
    else if (s.repeat) out[s.name] = input.value.split("\n").filter((v) => v !== "").map(unescape);
    else if (input.value.trim() === "") out[s.name] = null;
    else if (s.kind === "text") out[s.name] = input.value;
    else out[s.name] = Number(input.value);
  }
  return out;
}

function keepSettings() { localStorage.setItem(store.settings, JSON.stringify(readSettings())); }

function drawSeed() { return Math.floor(Math.random() * state.props.seed_draw); }

// --- the scene: text, what the model believed, the coloured view ------------------------------------

function binOf(p) {
  for (const bin of state.props.heat) if (p >= bin.low) return bin.colour;
  return state.props.heat[state.props.heat.length - 1].colour;
}

function setText(text, info, from = 0) {
  state.text = text;
  state.info = info;
  if ($("scene").value !== text) $("scene").value = text;
  render(from);
  try {
    localStorage.setItem(store.scene, text);
  } catch (e) { // the browser's quota (about 5 MB): the page goes on, the reload would lose it
    showError("this scene is too long for the browser to keep across a reload; Save .txt keeps it");
  }
}

function lineIndex(at) {
  const starts = state.lineStarts;
  let lo = 0, hi = starts.length - 1;
  while (lo < hi) { // the last line starting at or before `at`
    const mid = (lo + hi + 1) >> 1;
    if (starts[mid] <= at) lo = mid; else hi = mid - 1;
  }
  return Math.max(lo, 0);
}

function render(from = 0) {
  // the view is one element per line: only the lines from the one holding `from` are drawn again
  const view = $("view");
  let line = 0, start = 0;
  if (from > 0 && state.lineStarts.length) {
    line = lineIndex(Math.min(from, state.text.length));
    start = state.lineStarts[line];
  }
  for (const el of state.lineEls.splice(line)) el.remove();
  state.lineStarts.splice(line);
  const text = state.text;
  for (;;) {
    const nl = text.indexOf("\n", start);
    const end = nl < 0 ? text.length : nl + 1;
    const el = buildLine(start, end);
    view.append(el);
    state.lineEls.push(el);
    state.lineStarts.push(start);
    if (nl < 0) break;
    start = end;
  }
}

function buildLine(start, end) {
  const text = state.text;
  const el = document.createElement("span");
  el.className = SPEAKER.test(text.slice(start, end).replace(/\n$/, "")) ? "line speaker" : "line";
  let plain = "", gen = "";
  const flush = () => {
    if (plain) { el.append(plain); plain = ""; }
    if (gen) { const g = document.createElement("span"); g.className = "g"; g.textContent = gen; el.append(g); gen = ""; }
  };
  for (let i = start; i < end; i++) {
    const info = state.info[i];
    const ch = text[i];
    if (info && info.p !== undefined && info.p !== null) {
      flush();
      const c = document.createElement("span");
      c.className = "c h-" + binOf(info.p) + (i === state.sel ? " sel" : "");
      c.dataset.i = i;
      c.dataset.p = info.p.toFixed(4);
      c.textContent = ch;
      el.append(c);
    } else if (info) {
      if (plain) flush();
      gen += ch;
    } else {
      if (gen) flush();
      plain += ch;
    }
  }
  flush();
  return el;
}

function reconcile(newText) {
  // an edit keeps what the model believed of the characters before and after it
  const old = state.text;
  let a = 0;
  while (a < old.length && a < newText.length && old[a] === newText[a]) a++;
  let b = 0;
  while (b < old.length - a && b < newText.length - a && old[old.length - 1 - b] === newText[newText.length - 1 - b]) b++;
  const info = state.info.slice(0, a).concat(new Array(newText.length - a - b).fill(null), state.info.slice(old.length - b));
  state.lastRun = null;
  $("more").disabled = true;
  setText(newText, info, a);
}

function setMode(mode) {
  state.mode = mode;
  $("scene").hidden = mode !== "edit";
  $("view").hidden = mode !== "read";
  $("mode").textContent = mode === "edit" ? "Read" : "Edit";
  hideTip();
}

// --- generating ------------------------------------------------------------------------------------

function body(prompt, seed, extra = {}) {
  const s = readSettings();
  const stop = [...s.stop];
  if (s.one_speech && !stop.includes(state.props.speech_end)) stop.unshift(state.props.speech_end);
  const out = { prompt: prompt.slice(-state.props.limits.max_prompt_chars), stream: true, seed,
                max_tokens: s.max_tokens, temperature: s.temperature, top_k: s.top_k, top_p: s.top_p,
                min_p: s.min_p, repetition_penalty: s.repetition_penalty, ...extra };
  if (stop.length) out.stop = stop;
  if ($("heat").checked) out.logprobs = TOP;
  return out;
}

// what a run that ended at the end of a speech gets back: the blank line (the REPL's given_back)
function givenBack(finish) {
  const s = readSettings();
  return finish === "stop" && s.one_speech && s.stop.length === 0 ? state.props.speech_end : "";
}

function entries(lp, seed) {
  // a chunk's logprobs (OpenAI's completions shape) as one entry per character
  const out = [];
  if (!lp) return out;
  for (let k = 0; k < lp.tokens.length; k++) {
    const top = Object.entries(lp.top_logprobs[k] || {}).map(([c, l]) => [c, Math.exp(l)]).sort((x, y) => y[1] - x[1]);
    for (const ch of lp.tokens[k]) out.push({ p: Math.exp(lp.token_logprobs[k]), top, seed });
  }
  return out;
}

async function stream(req, onChoice) {
  const ctl = new AbortController();
  state.running = { ctl };
  busy(true);
  const t0 = performance.now();
  let first = null, chars = 0;
  const finishes = {};
  try {
    const res = await api("/v1/completions", { method: "POST", body: JSON.stringify(req), signal: ctl.signal });
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let k;
      while ((k = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, k).replace(/\r$/, "");
        buf = buf.slice(k + 1);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const obj = JSON.parse(data);
        if (obj.error) throw new Fail(obj.error.message);
        for (const choice of obj.choices || []) {
          if (choice.text) {
            if (first === null) first = performance.now();
            chars += choice.text.length;
          }
          if (choice.finish_reason) finishes[choice.index] = choice.finish_reason;
          onChoice(choice);
        }
      }
    }
    return { finishes, stopped: false, t0, first, end: performance.now(), chars };
  } catch (e) {
    if (e.name === "AbortError") return { finishes, stopped: true, t0, first, end: performance.now(), chars };
    if (e instanceof Fail) throw e;
    throw new Fail("the stream broke off (" + e.message + "); the text so far is kept; is `sgpt serve` still running?");
  } finally {
    state.running = null;
    busy(false);
  }
}

function busy(on) {
  $("stop").disabled = !on;
  for (const id of ["generate", "from-cursor", "more", "load", "clear"]) $(id).disabled = on || (id === "more" && !state.lastRun);
  $("scene").readOnly = on;
}

function speedLine(run, seed, words) {
  const secs = (run.end - run.t0) / 1000;
  const parts = [run.chars + " chars in " + secs.toFixed(2) + " s",
                 (secs > 0 ? Math.round(run.chars / secs) : 0) + " chars/s"];
  if (run.first !== null) parts.push("first char " + Math.round(run.first - run.t0) + " ms");
  parts.push("seed " + seed);
  if (words) parts.push(words);
  $("speed").textContent = parts.join(" · ");
  $("speed").dataset.seed = seed;
  $("speed").dataset.charsPerS = secs > 0 ? (run.chars / secs).toFixed(1) : "0";
}

const ENDS = { stop: "end of speech", length: "max characters reached" };

async function generate({ fromCursor = false, seed = null, text = null, info = null } = {}) {
  if (state.running || !state.props) return;
  clearError();
  hideTip();
  explainAsked++; // the text changes: an explanation still on its way is of the old one
  explainAt = -1;
  $("alts").hidden = true;
  let base = text !== null ? text : state.text;
  let baseInfo = info !== null ? info : state.info;
  if (fromCursor && text === null) {
    // the textarea's cursor; in the coloured view, the character picked there (it is dropped too)
    const cut = state.mode === "edit" ? $("scene").selectionStart : state.sel >= 0 ? state.sel : base.length;
    base = base.slice(0, cut);
    baseInfo = baseInfo.slice(0, cut);
  }
  const fixed = readSettings().seed;
  const s = seed !== null ? seed : fixed !== null ? fixed : drawSeed();
  setText(base, baseInfo.slice(), Math.max(0, base.length - 1));
  setMode("read");
  const start = base.length;
  state.lastRun = { start, seed: s };
  try {
    const run = await stream(body(base, s), (choice) => {
      if (!choice.text) return;
      const at = state.text.length;
      const got = entries(choice.logprobs, s);
      const add = got.length === choice.text.length ? got : new Array(choice.text.length).fill({ seed: s });
      state.text += choice.text;
      state.info.push(...add);
      render(at);
      follow();
    });
    const finish = run.finishes[0];
    const back = run.stopped ? "" : givenBack(finish);
    if (back) { state.text += back; state.info.push(...new Array(back.length).fill(null)); }
    setText(state.text, state.info, start);
    speedLine(run, s, run.stopped ? "stopped" : ENDS[finish]);
  } catch (e) {
    if (!(e instanceof Fail)) console.warn(e);
    showError(e.message);
    setText(state.text, state.info, start);
  }
  $("more").disabled = !state.lastRun;
}

function follow() {
  const view = $("view");
  view.scrollTop = view.scrollHeight;
}

function stop() {
  if (state.running) state.running.ctl.abort();
}

// --- alternatives: a character's, and three more runs ---------------------------------------------

function shown(ch) { return ch === "\n" ? "↵" : ch === " " ? "␣" : ch === "\t" ? "⇥" : ch; }

function showTip(i, anchor, deep = false) {
  // deep: the user picked this character (click, arrow keys): the tip is pinned to it and its
  // attention is asked for; otherwise a hover shows it until something is picked
  const info = state.info[i];
  if (!info || !info.top) return;
  state.sel = i;
  state.pinned = deep;
  for (const el of $("view").querySelectorAll(".c.sel")) el.classList.remove("sel");
  anchor.classList.add("sel");
  const tip = $("tip");
  tip.replaceChildren();
  const head = document.createElement("p");
  head.textContent = "'" + shown(state.text[i]) + "' " + (100 * info.p).toFixed(1) + "% · click one to continue with it";
  tip.append(head);
  info.top.forEach(([ch, p], k) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "alt-char" + (ch === state.text[i] ? " chosen" : "");
    b.dataset.char = ch;
    const left = document.createElement("span");
    left.textContent = (k + 1) + "  " + shown(ch);
    const right = document.createElement("span");
    right.textContent = (100 * p).toFixed(1) + "%";
    b.append(left, right);
    b.addEventListener("click", () => branch(i, ch));
    tip.append(b);
  });
  const stage = $("stage").getBoundingClientRect();
  const r = anchor.getBoundingClientRect();
  tip.hidden = false;
  const left = Math.min(r.left - stage.left, stage.width - tip.offsetWidth - 4);
  tip.style.left = Math.max(0, left) + "px";
  tip.style.top = (r.bottom - stage.top + 4) + "px";
  if (deep && (explainAt !== i || $("explain").hidden)) explain(i);
}

function hideTip() {
  $("tip").hidden = true;
  state.pinned = false;
}

function onViewOver(e) {
  // A pinned tip stays: the pointer also "moves" over other characters when the page moves under
  // it (the attention panel or an error line appearing, a scrollbar with them), and the alternative
  // the user is about to click must stay the one of the character they picked.
  const c = e.target.closest(".c");
  if (c && $("heat").checked && !(state.pinned && !$("tip").hidden)) showTip(Number(c.dataset.i), c);
}

function branch(i, ch) {
  // cut the text at i, put the chosen character there, go on with the run's seed: the same clicks
  // give the same text
  const info = state.info[i];
  if (!info || state.running) return;
  const p = (info.top.find(([c]) => c === ch) || [ch, null])[1];
  const text = state.text.slice(0, i) + ch;
  const kept = state.info.slice(0, i).concat([{ p, top: info.top, seed: info.seed }]);
  state.sel = -1;
  generate({ seed: info.seed, text, info: kept });
}

async function more() {
  if (state.running || !state.lastRun) return;
  clearError();
  hideTip();
  const { start, seed } = state.lastRun;
  const prompt = state.text.slice(0, start);
  const base = seed + 1; // choice j gets base + j, as the server numbers n choices
  state.alts = [0, 1, 2].map((j) => ({ seed: base + j, text: "", info: [], finish: null }));
  const box = $("alts");
  box.replaceChildren();
  const pres = state.alts.map((alt, j) => {
    const col = document.createElement("div");
    col.className = "alt";
    const head = document.createElement("div");
    head.className = "dim";
    head.textContent = "seed " + alt.seed;
    const pre = document.createElement("pre");
    const keep = document.createElement("button");
    keep.type = "button";
    keep.id = "keep-" + (j + 1);
    keep.textContent = "Keep this one";
    keep.addEventListener("click", () => keepAlt(j));
    col.append(head, pre, keep);
    box.append(col);
    return pre;
  });
  box.hidden = false;
  try {
    const run = await stream(body(prompt, base, { n: 3 }), (choice) => {
      const alt = state.alts[choice.index];
      if (!alt || !choice.text) return;
      const got = entries(choice.logprobs, alt.seed);
      alt.text += choice.text;
      alt.info.push(...(got.length === choice.text.length ? got : new Array(choice.text.length).fill({ seed: alt.seed })));
      pres[choice.index].textContent = alt.text;
    });
    state.alts.forEach((alt, j) => {
      alt.finish = run.finishes[j];
      const back = run.stopped ? "" : givenBack(alt.finish);
      alt.text += back;
      alt.info.push(...new Array(back.length).fill(null));
    });
    speedLine(run, base + "–" + (base + 2), run.stopped ? "stopped" : "3 choices");
  } catch (e) {
    showError(e.message);
  }
  $("more").disabled = !state.lastRun;
}

function keepAlt(j) {
  const alt = state.alts && state.alts[j];
  if (!alt || state.running) return;
  const start = state.lastRun.start;
  setText(state.text.slice(0, start) + alt.text, state.info.slice(0, start).concat(alt.info), Math.max(0, start - 1));
  state.lastRun = { start, seed: alt.seed };
  $("alts").hidden = true;
  setMode("read");
}

// --- attention (POST /v1/explain, where the server has it) ------------------------------------------

let explainAvailable = true;
let explainAsked = 0; // the latest request's number: an answer to an earlier one is not drawn
let explainAt = -1;   // the character it was asked for (a hover before the click asks nothing)
const EXPLAIN_SHOWN = 48; // the window's last characters drawn per head

async function explain(i) {
  // the character at i was chosen from the distribution after text[0:i]: that position explained
  if (!explainAvailable || !state.props.explain || i < 1) return;
  const asked = ++explainAsked;
  explainAt = i;
  const chosen = state.text[i];
  try {
    const res = await fetch("/v1/explain", { method: "POST", headers: headers(),
      body: JSON.stringify({ prompt: state.text.slice(Math.max(0, i - state.props.model.block_size), i), at: -1 }) });
    if (res.status === 404 || res.status === 405) { explainAvailable = false; $("explain").hidden = true; return; }
    if (!res.ok) return;
    const data = await res.json();
    if (asked === explainAsked) drawExplain(data, chosen);
  } catch (e) { /* the panel keeps what it showed */ }
}

function drawExplain(data, chosen) {
  if (!data || !Array.isArray(data.attention) || !data.window) return;
  const chars = data.window.characters;
  const from = Math.max(0, chars.length - EXPLAIN_SHOWN);
  const out = $("explain-body");
  out.replaceChildren();
  const head = document.createElement("p");
  head.className = "dim";
  head.textContent = "before '" + shown(chosen || "") + "': what each head of each layer attended to (darker: more)";
  out.append(head);
  for (const layer of data.attention) {
    for (const h of layer.heads) {
      const row = document.createElement("div");
      row.className = "attn";
      const label = document.createElement("span");
      label.className = "dim";
      label.textContent = "L" + layer.layer + " H" + h.head + " ";
      row.append(label);
      const top = Math.max(...h.weights.slice(from), 1e-9);
      for (let k = from; k < chars.length; k++) {
        const c = document.createElement("span");
        c.className = "w";
        c.textContent = shown(chars[k]);
        c.style.setProperty("--w", (h.weights[k] / top).toFixed(3));
        c.title = (100 * h.weights[k]).toFixed(1) + "%";
        row.append(c);
      }
      out.append(row);
    }
  }
  if (Array.isArray(data.lens)) {
    const lens = document.createElement("p");
    lens.className = "dim";
    lens.textContent = "the guess after each layer: " + data.lens.map((l) => l.after + " '" +
      shown((l.top[0] || {}).char || "") + "'").join(" · ");
    out.append(lens);
  }
  $("explain").hidden = false;
}

// --- save, load, keys ---------------------------------------------------------------------------------

function save() {
  const blob = new Blob([state.text], { type: "text/plain;charset=utf-8" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = "scene.txt";
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

async function load(file) {
  clearError();
  try {
    const text = (await file.text()).replace(/\r\n?/g, "\n");
    state.lastRun = null;
    setText(text, new Array(text.length).fill(null));
    setMode("edit");
  } catch (e) {
    showError("cannot load " + file.name + ": " + e.message);
  }
}

function onKey(e) {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    generate({ fromCursor: e.shiftKey });
  } else if (e.key === "Escape") {
    if (state.running) { e.preventDefault(); stop(); } else hideTip();
  }
}

function onViewKey(e) {
  if (!$("heat").checked) return;
  const spans = [...$("view").querySelectorAll(".c")];
  if (!spans.length) return;
  let k = spans.findIndex((el) => Number(el.dataset.i) === state.sel);
  if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
    e.preventDefault();
    k = k < 0 ? (e.key === "ArrowRight" ? 0 : spans.length - 1) : Math.max(0, Math.min(spans.length - 1, k + (e.key === "ArrowRight" ? 1 : -1)));
    spans[k].scrollIntoView({ block: "nearest" });
    showTip(Number(spans[k].dataset.i), spans[k], true);
  } else if (/^[1-9]$/.test(e.key) && state.sel >= 0 && !$("tip").hidden) {
    const info = state.info[state.sel];
    const pick = info && info.top && info.top[Number(e.key) - 1];
    if (pick) { e.preventDefault(); branch(state.sel, pick[0]); }
  }
}

function legend() {
  const el = $("legend");
  el.replaceChildren("heat: each character's colour is the probability the model gave it: ");
  for (const bin of state.props.heat) {
    const s = document.createElement("span");
    s.className = "sw h-" + bin.colour;
    s.style.color = "var(--h-" + bin.colour + ")";
    s.textContent = "■ " + bin.words + "  ";
    el.append(s);
  }
}

function setHeat(on) {
  $("heat").checked = on;
  $("view").classList.toggle("heat", on);
  $("legend").hidden = !on;
  localStorage.setItem(store.heat, on ? "1" : "0");
  if (!on) hideTip();
}

function modelLine(m) {
  const parts = [m.id];
  if (m.bytes) parts.push((m.bytes / 1e6).toFixed(1) + " MB (" + m.quantization + ")");
  parts.push(m.n_layer + " layers × " + m.n_embd + ", window " + m.block_size);
  if (m.val_loss !== null) parts.push("val loss " + m.val_loss.toFixed(4));
  parts.push(m.device);
  $("model").textContent = parts.join(" · ");
}

async function start() {
  clearError();
  try {
    const res = await api("/v1/sgpt/props");
    state.props = await res.json();
  } catch (e) {
    showError(e.message);
    return;
  }
  $("key-form").hidden = true;
  modelLine(state.props.model);
  buildSettings(state.props.settings);
  legend();
  setHeat(localStorage.getItem(store.heat) === "1");
  document.body.dataset.readyMs = String(Math.round(performance.now()));
  document.body.dataset.ready = "1";
}

function wire() {
  document.addEventListener("keydown", onKey);
  $("generate").addEventListener("click", () => generate());
  $("from-cursor").addEventListener("click", () => generate({ fromCursor: true }));
  $("stop").addEventListener("click", stop);
  $("more").addEventListener("click", more);
  $("mode").addEventListener("click", () => {
    setMode(state.mode === "edit" ? "read" : "edit");
    if (state.mode === "edit") $("scene").focus(); else $("view").focus();
  });
  $("heat").addEventListener("change", (e) => setHeat(e.target.checked));
  $("scene").addEventListener("input", (e) => reconcile(e.target.value));
  $("view").addEventListener("keydown", onViewKey);
  $("view").addEventListener("mouseover", onViewOver);
  $("view").addEventListener("click", (e) => {
    const c = e.target.closest(".c");
    if (c && $("heat").checked) showTip(Number(c.dataset.i), c, true);
    else hideTip(); // a click beside the characters lets go of the pinned tip
  });
  $("view").addEventListener("dblclick", () => { if (!state.running) { setMode("edit"); $("scene").focus(); } });
  $("draw").addEventListener("click", () => {
    $(fieldId("seed")).value = String(drawSeed());
    keepSettings();
  });
  $("defaults").addEventListener("click", () => {
    for (const s of state.props.settings) setField(s, s.default);
    keepSettings();
  });
  $("save").addEventListener("click", save);
  $("load").addEventListener("change", (e) => { if (e.target.files[0]) load(e.target.files[0]); e.target.value = ""; });
  $("clear").addEventListener("click", () => { state.lastRun = null; setText("", []); setMode("edit"); $("scene").focus(); });
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("key").value.trim();
    if (!key) return;
    sessionStorage.setItem(store.key, key);
    $("key").value = "";
    start();
  });
  const text = localStorage.getItem(store.scene) || "";
  setText(text, new Array(text.length).fill(null));
  setMode("edit");
}

wire();
start();
