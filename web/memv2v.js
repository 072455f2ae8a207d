// Memory-V2V frontend extension: placeholder registration; the bank browser and score overlays build on it.
import { app } from "../../scripts/app.js";

app.registerExtension({
  name: "MemoryV2V.core",
});
