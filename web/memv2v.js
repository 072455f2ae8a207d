// Memory-V2V frontend extension: show each Memory-V2V node's summary (retrieval scores, token budget, bank
// state) on the node itself. The ComfyUI frontend displays a node's `ui.text` output only for its own Preview
// Any node, so without this the summaries would reach the history but never the artist.
// The node grows to show the whole text (up to a limit, then it scrolls), and the last summary of each node is kept
// in the browser's localStorage (not in the workflow: that would mark it modified after every run), so it is back
// after a page reload even when the next run finds the node cached.
import { app } from "../../scripts/app.js";

const SUMMARY_WIDGET = "memv2v_summary";
const STORE_PREFIX = "memv2v.summary:";
const STORE_INDEX = "memv2v.summary.index";
const STORE_LIMIT = 300; // summaries kept; the oldest go first
const FONT_PX = 11;
const LINE_PX = 14;
const PAD_PX = 4; // the text box's inner padding
const MARGIN_PX = 6; // between the node's edge and the text box
const MAX_WIDTH = 900; // wider summaries scroll sideways
const MAX_LINES = 36; // longer summaries scroll

let measureContext = null;
function textWidth(line) {
  measureContext ??= document.createElement("canvas").getContext("2d");
  measureContext.font = `${FONT_PX}px monospace`;
  return measureContext.measureText(line).width;
}

/** The size (canvas units) the summary box needs: every line, each at full width, up to the limits. */
export function summaryLayout(text) {
  const lines = text.split("\n");
  const width = Math.max(...lines.map(textWidth)) + 2 * (PAD_PX + MARGIN_PX) + 4;
  const height = Math.min(lines.length, MAX_LINES) * LINE_PX + 2 * (PAD_PX + MARGIN_PX) + 2;
  return { width: Math.min(Math.ceil(width), MAX_WIDTH), height: Math.ceil(height) };
}

function summaryWidget(node) {
  let widget = node.widgets?.find((w) => w.name === SUMMARY_WIDGET);
  if (widget) return widget;
  const element = document.createElement("textarea");
  element.readOnly = true;
  element.wrap = "off";
  element.spellcheck = false;
  element.className = "comfy-multiline-input memv2v-summary";
  Object.assign(element.style, {
    fontFamily: "monospace", fontSize: `${FONT_PX}px`, lineHeight: `${LINE_PX}px`, padding: `${PAD_PX}px`,
    whiteSpace: "pre", overflow: "auto", resize: "none", boxSizing: "border-box", border: "none",
  });
  // Scroll the text when it has more to show; otherwise the canvas zooms as over any other part of the node.
  element.addEventListener("wheel", (event) => {
    const canScroll = element.scrollHeight > element.clientHeight || element.scrollWidth > element.clientWidth;
    if (canScroll && !event.ctrlKey) {
      event.stopPropagation();
      return;
    }
    event.preventDefault();
    app.canvas?.processMouseWheel?.(event);
  });
  widget = node.addDOMWidget(SUMMARY_WIDGET, "memv2v_summary", element, {
    getValue: () => element.value,
    setValue: (value) => { element.value = value; },
    getMinHeight: () => widget.memv2vHeight ?? 2 * LINE_PX,
    getMaxHeight: () => widget.memv2vHeight ?? 2 * LINE_PX,
    margin: MARGIN_PX,
    serialize: false, // a display, not an input: never saved into the workflow nor sent with the prompt
  });
  widget.serialize = false;
  return widget;
}

function showSummary(node, text) {
  const widget = summaryWidget(node);
  widget.value = text;
  const layout = summaryLayout(text);
  widget.memv2vHeight = layout.height;
  // Fit the node to its content: as wide as the summary needs (never narrower than the artist made it) and exactly
  // as tall as its widgets need, unless the artist made it taller since the last fit.
  const needed = node.computeSize();
  const userTaller = node.memv2vFitHeight !== undefined && node.size[1] > node.memv2vFitHeight + 1;
  const width = Math.max(node.size[0], needed[0], layout.width);
  const height = userTaller ? Math.max(node.size[1], needed[1]) : needed[1];
  node.setSize([width, height]);
  node.memv2vFitHeight = height;
  node.setDirtyCanvas?.(true, true);
}

// ---------------------------------------------------------------------------------------------------------------
// The last summary per node, kept across page reloads

function storeKey(node) {
  const graph = node.graph ?? app.graph;
  const root = graph?.rootGraph ?? graph;
  if (!root?.id || node.id == null) return null;
  return `${STORE_PREFIX}${root.id}/${graph === root ? "" : graph.id}/${node.id}`;
}

function remember(node, text) {
  const key = storeKey(node);
  if (!key) return;
  try {
    const index = JSON.parse(localStorage.getItem(STORE_INDEX) || "[]").filter((k) => k !== key);
    index.push(key);
    for (const old of index.splice(0, Math.max(0, index.length - STORE_LIMIT))) localStorage.removeItem(old);
    localStorage.setItem(key, text);
    localStorage.setItem(STORE_INDEX, JSON.stringify(index));
  } catch (error) {
    console.warn("Memory-V2V: could not keep the node summary for a reload", error); // storage full or disabled
  }
}

function recall(node) {
  const key = storeKey(node);
  try {
    return key ? localStorage.getItem(key) : null;
  } catch {
    return null;
  }
}

app.registerExtension({
  name: "MemoryV2V.NodeSummary",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name.startsWith("MemV2V_")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text;
      if (!Array.isArray(text) || !text.length) return;
      const joined = text.map(String).join("\n");
      showSummary(this, joined);
      remember(this, joined);
    };
  },
  loadedGraphNode(node) {
    if (!node.type?.startsWith("MemV2V_")) return;
    const text = recall(node);
    if (text) showSummary(node, text);
  },
});
