// Memory-V2V bank browser: a sidebar tab that lists the memory banks and, for the chosen bank, every entry as a
// card (thumbnail, turn, prompt, seed, camera, segment, time, parents, branch, hidden or not) with hide / restore,
// "branch from here" and "open this turn's workflow". After a run, the entries it retrieved are marked with their
// scores. The data comes from the pack's routes (/memv2v/banks..., docs/bank-format.md section 10) and, for the
// marks, from ComfyUI's own /history, so runs queued by the runner or another tab are marked too.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const TAB_ID = "memv2v-bank-browser";
const BANK_KEY = "memv2v.bankBrowser.bank";
const HISTORY_ITEMS = 32;
const RETRIEVAL_NODES = {
  MemV2V_FOVRetrieve: "FOV Retrieve",
  MemV2V_SegmentRetrieve: "Segment Retrieve",
  MemV2V_StoryMemorySelect: "Story Memory Select",
};

const state = {
  root: null, // the tab's element while it is open
  banks: [],
  bank: localStorage.getItem(BANK_KEY) || null,
  summary: null, // GET /memv2v/banks/{name}
  entries: [],
  run: null, // the newest run that retrieved from the shown bank: {promptId, time, marks: Map(id -> [mark])}
  message: null, // {text, error}
  branchFormFor: null, // entry id whose "branch from here" form is open
  busy: false,
  loading: null,
};

// ---------------------------------------------------------------------------------------------------------------
// Server

const enc = encodeURIComponent;
const bankPath = (name) => `/memv2v/banks/${enc(name)}`;

async function requestJson(path, options) {
  const response = await api.fetchApi(path, options);
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null; // not JSON: a route this server does not have
  }
  if (!response.ok) {
    const error = new Error(body?.error ?? `${path} answered ${response.status} ${response.statusText}`);
    error.status = response.status;
    error.routeMissing = body === null;
    throw error;
  }
  return body;
}

const postJson = (path, body) =>
  requestJson(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body ?? {}) });

// ---------------------------------------------------------------------------------------------------------------
// What a run retrieved, read from its history entry

/** The bank name a node's `bank` input comes from: a Bank Load upstream (through Bank Add, which passes it on). */
function bankOf(prompt, nodeId) {
  let node = prompt[nodeId];
  for (let hops = 0; node && hops < 32; hops++) {
    if (node !== prompt[nodeId] && node.class_type === "MemV2V_BankLoad") {
      return typeof node.inputs?.name === "string" ? node.inputs.name : null;
    }
    const link = node.inputs?.bank;
    if (!Array.isArray(link)) return null;
    node = prompt[String(link[0])];
  }
  return null;
}

const number = (text) => (text === undefined || text === "-" ? null : Number(text));

/** Retrieved entries from a retrieval node's text table: [{id (maybe a prefix), rank, score, detail}]. */
export function parseRetrievalText(classType, text) {
  const found = [];
  for (const line of String(text ?? "").split("\n")) {
    let m;
    if (classType === "MemV2V_FOVRetrieve") {
      // rank  entry(16)  IoU  contain  score  [label]; unranked rows start with "-"
      m = line.match(/^\s*(\d+)\s+([0-9a-f]{8,64})\s+(-?[\d.]+)\s+(-?[\d.]+)\s+(-?[\d.]+)/);
      if (m) found.push({ id: m[2], rank: +m[1], score: +m[5], detail: `IoU ${m[3]}, containment ${m[4]}` });
    } else if (classType === "MemV2V_SegmentRetrieve") {
      // rank  segment  similarity  entry
      m = line.match(/^\s*(\d+)\s+(-?\d+)\s+(-?[\d.]+|-)\s+([0-9a-f]{16,64})(.*)$/);
      if (m) found.push({ id: m[4], rank: +m[1], score: number(m[3]), detail: `segment ${m[2]}${m[5].trim() ? " " + m[5].trim() : ""}` });
    } else if (classType === "MemV2V_StoryMemorySelect") {
      // #index  shot S kf K (id8)  reason  score: one row per chosen keyframe; one mark per shot entry
      m = line.match(/^\s*#(\d+)\s+shot (\S+) kf (\d+) \(([0-9a-f]{8,64})\)\s+(\S+)\s+(-?[\d.]+|-)/);
      if (!m) continue;
      const known = found.find((f) => f.id === m[4]);
      if (known) {
        known.keyframes += 1;
        known.score = Math.max(known.score ?? -Infinity, number(m[6]) ?? -Infinity);
        if (!Number.isFinite(known.score)) known.score = null;
        known.detail = `${known.keyframes} keyframes (${m[5]})`;
      } else {
        found.push({ id: m[4], rank: found.length + 1, score: number(m[6]), keyframes: 1, detail: `1 keyframe (${m[5]})` });
      }
    }
  }
  return found;
}

/** Every retrieval report of one history item: [{bank (or null), node, nodeId, entries}]. */
function reportsOf(item) {
  const prompt = Array.isArray(item?.prompt) ? item.prompt[2] ?? {} : {};
  const reports = [];
  for (const [nodeId, ui] of Object.entries(item?.outputs ?? {})) {
    const classType = prompt[nodeId]?.class_type;
    if (!(classType in RETRIEVAL_NODES)) continue;
    const title = prompt[nodeId]?._meta?.title || RETRIEVAL_NODES[classType];
    if (Array.isArray(ui?.memv2v_retrieved) && ui.memv2v_retrieved.length) {
      for (const report of ui.memv2v_retrieved) {
        reports.push({ bank: report.bank ?? null, node: title, nodeId, entries: report.entries ?? [] });
      }
    } else if (Array.isArray(ui?.text)) {
      reports.push({ bank: bankOf(prompt, nodeId), node: title, nodeId, entries: parseRetrievalText(classType, ui.text.join("\n")) });
    }
  }
  return reports;
}

function finishedAt(item) {
  const messages = item?.status?.messages ?? [];
  for (let i = messages.length - 1; i >= 0; i--) {
    const stamp = messages[i]?.[1]?.timestamp;
    if (typeof stamp === "number") return new Date(stamp);
  }
  return null;
}

/** The newest finished run that retrieved from `bank` (its entries: ids may be prefixes; matched to full ids). */
async function lastRun(bank, entries) {
  const history = await requestJson(`/history?max_items=${HISTORY_ITEMS}`);
  const items = Object.entries(history ?? {});
  const fullId = (id) => entries.find((entry) => entry.id === id || entry.id.startsWith(id))?.id;
  for (let i = items.length - 1; i >= 0; i--) {
    const [promptId, item] = items[i];
    // A report names its bank, or (text tables) is taken for this bank when its ids are this bank's entries.
    const reports = reportsOf(item).filter((r) =>
      r.bank === bank || (r.bank === null && r.entries.length && r.entries.every((e) => fullId(e.id))));
    if (!reports.length) continue;
    const marks = new Map();
    for (const report of reports) {
      for (const found of report.entries) {
        const id = fullId(found.id);
        if (!id) continue;
        if (!marks.has(id)) marks.set(id, []);
        marks.get(id).push({ node: report.node, rank: found.rank, score: found.score, detail: found.detail });
      }
    }
    return { promptId, time: finishedAt(item), nodes: reports.map((r) => r.node), marks };
  }
  return null;
}

// ---------------------------------------------------------------------------------------------------------------
// Loading

async function loadBanks() {
  state.banks = await requestJson("/memv2v/banks");
  if (!state.banks.includes(state.bank)) state.bank = state.banks[0] ?? null;
}

async function loadBank() {
  if (!state.bank) {
    state.summary = null;
    state.entries = [];
    state.run = null;
    return;
  }
  const name = state.bank;
  const [summary, entries] = await Promise.all([requestJson(bankPath(name)), requestJson(`${bankPath(name)}/entries`)]);
  let run = null;
  try {
    run = await lastRun(name, entries);
  } catch (error) {
    console.warn("Memory-V2V bank browser: could not read /history for the retrieval marks", error);
  }
  if (name !== state.bank) return; // the artist chose another bank meanwhile
  Object.assign(state, { summary, entries, run });
}

/** Reload banks and the shown bank (once at a time; a call while loading reloads again afterwards). */
export async function refresh() {
  if (state.loading) {
    state.again = true;
    return state.loading;
  }
  state.loading = (async () => {
    do {
      state.again = false;
      try {
        await loadBanks();
        await loadBank();
      } catch (error) {
        setMessage(`Could not read the memory banks: ${error.message}`, true);
      }
    } while (state.again);
    state.loading = null;
    render();
  })();
  return state.loading;
}

function setMessage(text, error = false) {
  state.message = text ? { text, error } : null;
  render();
}

async function act(work) {
  if (state.busy) return;
  state.busy = true;
  render();
  try {
    await work();
  } catch (error) {
    setMessage(error.message, true);
  } finally {
    state.busy = false;
    await refresh();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Actions

function entryName(entry) {
  return entry.turn != null ? `turn ${entry.turn}` : `entry ${entry.id.slice(0, 8)}`;
}

const hide = (entry) => act(async () => {
  await postJson(`${bankPath(state.bank)}/entries/${entry.id}/hide`);
  setMessage(`Hid ${entryName(entry)}: retrieval leaves it out from the next run on (nothing was deleted; Restore brings it back).`);
});

const restore = (entry) => act(async () => {
  await postJson(`${bankPath(state.bank)}/entries/${entry.id}/restore`);
  setMessage(`Restored ${entryName(entry)}: retrieval sees it again from the next run on.`);
});

const branchFrom = (entry, name) => act(async () => {
  const answer = await postJson(`${bankPath(state.bank)}/branch`, { from: entry.id, name });
  state.branchFormFor = null;
  setMessage(`Branch '${answer.active_branch}' from ${entryName(entry)} is active: retrieval sees only ${entryName(entry)}, ` +
    "its ancestors and the turns added on the branch; the next Bank Add records the branch.");
});

const switchBranch = (name) => act(async () => {
  await postJson(`${bankPath(state.bank)}/branch`, { name });
  setMessage(name ? `Branch '${name}' is active.` : "The whole bank is active again (no branch).");
});

async function openWorkflow(entry) {
  let data;
  try {
    data = await requestJson(`${bankPath(state.bank)}/entries/${entry.id}/prompt`);
  } catch (error) {
    setMessage(error.routeMissing && error.status === 404
      ? `Cannot open ${entryName(entry)}'s workflow: this ComfyUI's Memory-V2V pack has no stored-prompt route ` +
        "(/memv2v/banks/<bank>/entries/<id>/prompt). Update the pack and restart ComfyUI."
      : `Cannot open ${entryName(entry)}'s workflow: ${error.message}`, true);
    return;
  }
  const title = `${state.bank} ${entryName(entry)}`;
  try {
    if (data?.workflow && typeof data.workflow === "object" && Array.isArray(data.workflow.nodes)) {
      await app.loadGraphData(data.workflow, true, true, title); // a new workflow tab; the current graph stays
      setMessage(`Opened the workflow of ${entryName(entry)} as '${title}'.`);
    } else if (data?.prompt && typeof data.prompt === "object" && Object.keys(data.prompt).length) {
      await app.loadApiJson(data.prompt, title);
      setMessage(`Opened the prompt of ${entryName(entry)} as '${title}' (no UI workflow was stored: nodes are auto-arranged).`);
    } else {
      setMessage(`${entryName(entry)} has no stored workflow or prompt (it was stored before the bank recorded them).`, true);
    }
  } catch (error) {
    setMessage(`Cannot open ${entryName(entry)}'s workflow: ${error.message}`, true);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Rendering

function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key in el && key !== "list") el[key] = value;
    else el.setAttribute(key, value);
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

/** Entry ids a named branch holds (its start's lineage plus entries added on it, and theirs), as in the core. */
function branchMembers(name) {
  const info = state.summary?.branches?.[name];
  if (!info) return null;
  const byId = new Map(state.entries.map((e) => [e.id, e]));
  const order = [info.from, ...state.entries.filter((e) => e.branch === name).map((e) => e.id)].filter((id) => byId.has(id));
  const seen = new Set(order);
  for (let i = 0; i < order.length; i++) {
    for (const parent of byId.get(order[i]).parents) {
      if (byId.has(parent) && !seen.has(parent)) {
        seen.add(parent);
        order.push(parent);
      }
    }
  }
  return seen;
}

function formatTime(value) {
  const date = value instanceof Date ? value : new Date(value);
  return Number.isNaN(date.getTime()) ? String(value ?? "") : date.toLocaleString();
}

function score(value) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(3) : "-";
}

function card(entry, context) {
  const { byId, members } = context;
  const marks = state.run?.marks.get(entry.id) ?? [];
  const hiddenParents = entry.parents.filter((p) => byId.get(p)?.hidden);
  const outside = members && !entry.hidden && !members.has(entry.id);
  const parents = entry.parents.map((p) => (byId.has(p) ? entryName(byId.get(p)) : `${p.slice(0, 8)} (not in this bank)`));
  const facts = [
    entry.seed != null ? `seed ${entry.seed}` : null,
    entry.camera ? `camera ${entry.camera}` : entry.camera_frames ? `camera (${entry.camera_frames} poses)` : null,
    entry.segment_index != null ? `segment ${entry.segment_index}` : null,
    entry.source_id ? `source ${entry.source_id}` : null,
  ].filter(Boolean);
  const badges = [
    entry.hidden ? h("span", { className: "memv2v-badge memv2v-badge-hidden" }, "hidden") : null,
    hiddenParents.length ? h("span", { className: "memv2v-badge memv2v-badge-warn", title: "A parent of this entry is hidden; this entry is still retrieved." }, "parent hidden") : null,
    outside ? h("span", { className: "memv2v-badge", title: "Not on the active branch: retrieval leaves it out." }, "off branch") : null,
    ...marks.map((m) => h("span", {
      className: "memv2v-badge memv2v-mark",
      title: `${m.node}${m.detail ? ": " + m.detail : ""}`,
    }, `retrieved #${m.rank} · ${score(m.score)}`)),
  ];
  const thumbnail = h("img", {
    className: "memv2v-thumb",
    loading: "lazy",
    alt: `thumbnail of ${entryName(entry)}`,
    src: api.apiURL(`${bankPath(state.bank)}/entries/${entry.id}/thumbnail?frames=4&height=64`),
  });
  const branchForm = state.branchFormFor === entry.id ? branchFormOf(entry) : null;
  return h("div", {
    className: `memv2v-card${entry.hidden ? " memv2v-hidden" : ""}${marks.length ? " memv2v-retrieved" : ""}`,
    dataset: { entryId: entry.id, hidden: String(entry.hidden) },
  },
  thumbnail,
  h("div", { className: "memv2v-card-head" },
    h("span", { className: "memv2v-turn" }, entry.turn != null ? `Turn ${entry.turn}` : "Entry"),
    ...badges),
  h("div", { className: "memv2v-prompt", title: entry.prompt || "" }, entry.prompt || h("i", {}, "no prompt recorded")),
  facts.length ? h("div", { className: "memv2v-facts" }, facts.join(" · ")) : null,
  h("div", { className: "memv2v-facts" },
    `${formatTime(entry.created)}${entry.branch ? ` · branch ${entry.branch}` : ""}`),
  parents.length ? h("div", { className: "memv2v-facts", title: entry.parents.join("\n") }, `parents: ${parents.join(", ")}`) : null,
  h("div", { className: "memv2v-facts memv2v-id", title: entry.id }, `id ${entry.id.slice(0, 16)}`),
  h("div", { className: "memv2v-actions" },
    entry.hidden
      ? h("button", { className: "memv2v-button", dataset: { action: "restore" }, disabled: state.busy, title: "Let retrieval see this entry again", onclick: () => restore(entry) }, "Restore")
      : h("button", { className: "memv2v-button", dataset: { action: "hide" }, disabled: state.busy, title: "Undo this turn: retrieval leaves it out (nothing is deleted)", onclick: () => hide(entry) }, "Hide"),
    h("button", {
      className: "memv2v-button", dataset: { action: "branch" }, disabled: state.busy || entry.hidden,
      title: entry.hidden ? "Restore the entry first: a branch cannot start from a hidden entry" : "Later turns see only this entry and its ancestors",
      onclick: () => { state.branchFormFor = state.branchFormFor === entry.id ? null : entry.id; render(); },
    }, "Branch from here"),
    h("button", { className: "memv2v-button", dataset: { action: "open" }, title: "Open the workflow that made this turn in a new tab", onclick: () => openWorkflow(entry) }, "Open workflow")),
  branchForm);
}

function branchFormOf(entry) {
  const suggested = `from-${entry.turn != null ? "turn-" + entry.turn : entry.id.slice(0, 8)}`;
  const input = h("input", { className: "memv2v-input", value: suggested, maxLength: 64, dataset: { role: "branch-name" }, title: "1-64 letters, digits, spaces, - _ ." });
  const submit = () => branchFrom(entry, input.value.trim());
  input.addEventListener("keydown", (event) => { if (event.key === "Enter") submit(); });
  return h("div", { className: "memv2v-branch-form" },
    input,
    h("button", { className: "memv2v-button", dataset: { action: "create-branch" }, onclick: submit }, "Create"),
    h("button", { className: "memv2v-button", onclick: () => { state.branchFormFor = null; render(); } }, "Cancel"));
}

function header() {
  const bankSelect = h("select", {
    className: "memv2v-input", dataset: { role: "bank" }, title: "Memory bank (output/memory_banks)",
    onchange: (event) => {
      state.bank = event.target.value;
      localStorage.setItem(BANK_KEY, state.bank);
      Object.assign(state, { entries: [], summary: null, run: null, message: null, branchFormFor: null });
      refresh();
    },
  }, state.banks.map((name) => h("option", { value: name, selected: name === state.bank }, name)));
  const summary = state.summary;
  const branches = Object.keys(summary?.branches ?? {});
  const branchSelect = summary ? h("select", {
    className: "memv2v-input", dataset: { role: "branch" }, disabled: state.busy,
    title: "What retrieval sees: the whole bank or one branch",
    onchange: (event) => switchBranch(event.target.value || null),
  },
  h("option", { value: "", selected: !summary.active_branch }, "whole bank"),
  branches.map((name) => {
    const start = state.entries.find((e) => e.id === summary.branches[name].from);
    return h("option", { value: name, selected: name === summary.active_branch, title: `starts from ${start ? entryName(start) : summary.branches[name].from}` },
      `${name}${start ? ` (${entryName(start)})` : ""}`);
  })) : null;
  const counts = summary
    ? `${summary.entries} visible, ${summary.hidden} hidden · ${summary.latent_format ?? "empty"}`
    : "";
  const run = state.run;
  return h("div", { className: "memv2v-header" },
    h("div", { className: "memv2v-row" },
      h("b", {}, "Memory banks"),
      h("button", { className: "memv2v-button", dataset: { action: "refresh" }, title: "Reload", onclick: () => refresh() }, "Refresh")),
    state.banks.length
      ? h("div", { className: "memv2v-row" }, h("span", { className: "memv2v-label" }, "Bank"), bankSelect)
      : h("div", { className: "memv2v-facts" }, "No memory banks yet: a Bank Load node creates one in output/memory_banks."),
    branchSelect ? h("div", { className: "memv2v-row" }, h("span", { className: "memv2v-label" }, "Retrieval sees"), branchSelect) : null,
    counts ? h("div", { className: "memv2v-facts", dataset: { role: "counts" } }, counts) : null,
    summary?.problems?.length ? h("div", { className: "memv2v-message memv2v-error" }, `Problems: ${summary.problems.join("; ")}`) : null,
    run ? h("div", { className: "memv2v-facts", dataset: { role: "last-run" }, title: `prompt ${run.promptId}` },
      `Last run${run.time ? ` (${formatTime(run.time)})` : ""}: ${run.nodes.join(", ")} retrieved ${run.marks.size} ${run.marks.size === 1 ? "entry" : "entries"}`) : null,
    state.message ? h("div", { className: `memv2v-message${state.message.error ? " memv2v-error" : ""}`, dataset: { role: "message" }, role: "status" }, state.message.text) : null);
}

function render() {
  const root = state.root;
  if (!root) return;
  const list = root.querySelector(".memv2v-list");
  const scroll = root.scrollTop;
  const byId = new Map(state.entries.map((e) => [e.id, e]));
  const members = state.summary?.active_branch ? branchMembers(state.summary.active_branch) : null;
  const cards = [...state.entries].reverse().map((entry) => card(entry, { byId, members })); // newest first
  root.querySelector(".memv2v-header-slot").replaceChildren(header());
  list.replaceChildren(...(cards.length || !state.bank ? cards : [h("div", { className: "memv2v-facts" }, "This bank has no entries yet.")]));
  root.scrollTop = scroll;
}

const STYLE = `
#${TAB_ID} { height: 100%; overflow-y: auto; padding: 8px; box-sizing: border-box; font-size: 12px; color: var(--fg-color, #ddd); }
#${TAB_ID} .memv2v-header { display: flex; flex-direction: column; gap: 6px; margin-bottom: 8px; }
#${TAB_ID} .memv2v-row { display: flex; gap: 6px; align-items: center; justify-content: space-between; flex-wrap: wrap; }
#${TAB_ID} .memv2v-label { color: var(--descrip-text, #999); font-size: 11px; flex: none; width: 84px; }
#${TAB_ID} .memv2v-list { display: flex; flex-direction: column; gap: 8px; }
#${TAB_ID} .memv2v-card { border: 1px solid var(--border-color, #444); border-radius: 6px; padding: 6px; background: var(--comfy-input-bg, #222); display: flex; flex-direction: column; gap: 3px; }
#${TAB_ID} .memv2v-card.memv2v-hidden { opacity: 0.55; border-style: dashed; }
#${TAB_ID} .memv2v-card.memv2v-retrieved { border-color: #3a9d5d; box-shadow: 0 0 0 1px #3a9d5d inset; }
#${TAB_ID} .memv2v-thumb { width: 100%; height: 64px; object-fit: contain; background: #000; border-radius: 3px; image-rendering: pixelated; }
#${TAB_ID} .memv2v-card-head { display: flex; gap: 4px; align-items: center; flex-wrap: wrap; }
#${TAB_ID} .memv2v-turn { font-weight: bold; margin-right: 4px; }
#${TAB_ID} .memv2v-badge { font-size: 10px; padding: 1px 5px; border-radius: 8px; background: #555; color: #fff; white-space: nowrap; }
#${TAB_ID} .memv2v-badge-hidden { background: #8a3b3b; }
#${TAB_ID} .memv2v-badge-warn { background: #8a6d1f; }
#${TAB_ID} .memv2v-mark { background: #2f7d4a; }
#${TAB_ID} .memv2v-prompt { overflow: hidden; display: -webkit-box; -webkit-line-clamp: 2; -webkit-box-orient: vertical; }
#${TAB_ID} .memv2v-facts { color: var(--descrip-text, #999); font-size: 11px; overflow-wrap: anywhere; }
#${TAB_ID} .memv2v-id { font-family: monospace; }
#${TAB_ID} .memv2v-actions, #${TAB_ID} .memv2v-branch-form { display: flex; gap: 4px; flex-wrap: wrap; margin-top: 2px; }
#${TAB_ID} .memv2v-button { font-size: 11px; padding: 2px 8px; border-radius: 4px; border: 1px solid var(--border-color, #555); background: var(--comfy-menu-bg, #333); color: inherit; cursor: pointer; }
#${TAB_ID} .memv2v-button:disabled { opacity: 0.5; cursor: default; }
#${TAB_ID} .memv2v-input { font-size: 11px; padding: 2px 4px; border-radius: 4px; border: 1px solid var(--border-color, #555); background: var(--comfy-input-bg, #222); color: inherit; min-width: 0; flex: 1; }
#${TAB_ID} .memv2v-message { padding: 4px 6px; border-radius: 4px; background: #2d4a36; overflow-wrap: anywhere; }
#${TAB_ID} .memv2v-message.memv2v-error { background: #5a2d2d; }
`;

function mount(el) {
  if (!document.getElementById(`${TAB_ID}-style`)) {
    document.head.append(h("style", { id: `${TAB_ID}-style` }, STYLE));
  }
  state.root = h("div", { id: TAB_ID }, h("div", { className: "memv2v-header-slot" }), h("div", { className: "memv2v-list" }));
  el.replaceChildren(state.root);
  render();
  refresh();
}

// A run that finished (here or from another client: "status" is sent to everyone) may have added or retrieved
// entries; reload while the tab is open.
let pending = null;
function refreshSoon() {
  if (!state.root) return;
  clearTimeout(pending);
  pending = setTimeout(() => refresh(), 250);
}

app.registerExtension({
  name: "MemoryV2V.BankBrowser",
  async setup() {
    api.addEventListener("execution_success", refreshSoon);
    api.addEventListener("status", (event) => {
      if (event.detail?.exec_info?.queue_remaining === 0) refreshSoon();
    });
    const manager = app.extensionManager;
    if (!manager?.registerSidebarTab) {
      console.warn("Memory-V2V bank browser: this ComfyUI frontend has no sidebar tab API (extensionManager.registerSidebarTab)");
      return;
    }
    manager.registerSidebarTab({
      id: TAB_ID,
      icon: "pi pi-images",
      title: "Memory",
      tooltip: "Memory-V2V banks",
      type: "custom",
      render: mount,
      destroy: () => { state.root = null; },
    });
  },
});
