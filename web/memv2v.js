// Memory-V2V frontend extension: show each Memory-V2V node's summary (retrieval scores, token budget, bank
// state) on the node itself. The ComfyUI frontend displays a node's `ui.text` output only for its own Preview
// Any node, so without this the summaries would reach the history but never the artist.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const SUMMARY_WIDGET = "memv2v_summary";

function showSummary(node, lines) {
  let widget = node.widgets?.find((w) => w.name === SUMMARY_WIDGET);
  if (!widget) {
    widget = ComfyWidgets.STRING(node, SUMMARY_WIDGET, ["STRING", { multiline: true }], app).widget;
    widget.element.readOnly = true;
    widget.element.style.fontFamily = "monospace";
    widget.serialize = false; // a display, not an input: never saved into the workflow...
    if (widget.options) widget.options.serialize = false; // ...nor sent with the prompt
  }
  widget.value = lines.join("\n");
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "MemoryV2V.NodeSummary",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name.startsWith("MemV2V_")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text;
      if (Array.isArray(text) && text.length) showSummary(this, text.map(String));
    };
  },
});
