// Memory-V2V in the template browser: titles, one-sentence descriptions and the main workflow first.
// ComfyUI lists a custom node pack's templates by file name only (GET /workflow_templates: {folder: [names]}), and
// the frontend shows that name as the title and again as the description. ComfyUI's own templates carry titles and
// descriptions in templates/index.json, so this puts the pack's entries (web/workflow_templates.json, written by
// memv2v_cli/authoring/builder.py in that format) there instead, under the pack's folder name: thumbnails and
// workflow files still come from /api/workflow_templates/<folder>/, and the pack is still listed under Custom Nodes.
import { api } from "../../scripts/api.js";

const INDEX_URL = new URL("./workflow_templates.json", import.meta.url);
let ours = null; // promise of {folder, category} or null

async function loadOurs(customByFolder) {
  try {
    const response = await fetch(INDEX_URL, { cache: "no-store" });
    if (!response.ok) return null;
    const [category] = await response.json();
    const names = new Set(category.templates.map((t) => t.name));
    // The folder the pack was installed under: the one whose templates are ours.
    const folder = Object.keys(customByFolder).find((key) => customByFolder[key].some((n) => names.has(n)));
    if (!folder) return null;
    const served = new Set(customByFolder[folder]);
    const templates = category.templates.filter((t) => served.has(t.name));
    const extra = customByFolder[folder].filter((n) => !names.has(n))
      .map((name) => ({ name, title: name, description: name, mediaType: "image", mediaSubtype: "jpg" }));
    return { folder, category: { ...category, moduleName: folder, templates: [...templates, ...extra] } };
  } catch (error) {
    console.warn("Memory-V2V: template index not used:", error);
    return null;
  }
}

if (typeof api.getWorkflowTemplates === "function" && typeof api.getCoreWorkflowTemplates === "function") {
  const getCustom = api.getWorkflowTemplates.bind(api);
  const getCore = api.getCoreWorkflowTemplates.bind(api);
  api.getWorkflowTemplates = async function (...args) {
    const custom = await getCustom(...args);
    ours = loadOurs(custom);
    const found = await ours;
    if (!found) return custom;
    const rest = { ...custom };
    delete rest[found.folder];
    return rest;
  };
  api.getCoreWorkflowTemplates = async function (...args) {
    const core = await getCore(...args);
    if (!ours) ours = getCustom().then(loadOurs);
    const found = await ours;
    return found && Array.isArray(core) ? [...core, found.category] : core;
  };
}
