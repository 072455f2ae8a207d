"""Retrieval nodes: pick the stored generations that already show what the target camera will see."""

from __future__ import annotations

from comfy_api.latest import io

from ..memv2v_core.camera.trajectory import Trajectory
from ..memv2v_core.retrieval.fov import DEFAULT_LAMBDA, DEFAULT_TOP_K, FOVParams
from ..memv2v_core.retrieval.fov_retrieval import format_score_table, select_by_fov
from .socket_types import Bank, Camera, Selection

CATEGORY = "MemoryV2V/retrieval"


class FOVRetrieve(io.ComfyNode):
    """VideoFOV retrieval: rank bank entries by how much of the target's field of view they cover."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemV2V_FOVRetrieve",
            display_name="Memory-V2V FOV Retrieve",
            category=CATEGORY,
            description=("Memory-V2V's VideoFOV retrieval for novel view synthesis: each stored generation is "
                         "scored by lambda * IoU + (1 - lambda) * containment of the target camera's field of view "
                         "on a 180x360 sphere grid, and the top_k best are selected. Entries without a camera are "
                         "skipped and listed. Masks are cached in the bank, so stored entries are projected once."),
            inputs=[
                Bank.Input("bank", tooltip="The memory bank of this scene (may be empty: then nothing is selected)."),
                Camera.Input("camera", tooltip="The target camera trajectory of the generation about to be made."),
                io.Int.Input("top_k", default=DEFAULT_TOP_K, min=0, max=64,
                             tooltip="How many memories to keep, best first (6 = the top of Memory-V2V's trained "
                                     "range); larger than the bank keeps them all. 0 = memory off: nothing is "
                                     "retrieved and the turn is plain ReCamMaster."),
                io.Float.Input("lam", display_name="lambda", default=DEFAULT_LAMBDA, min=0.0, max=1.0, step=0.05,
                               tooltip="Weight of IoU against containment (the share of the target's view a memory "
                                       "covers); 0.5 as in the paper."),
                io.Float.Input("sphere_radius", default=1.0, min=0.01, max=1000.0, step=0.1,
                               tooltip="Radius of the visibility sphere (paper: 1). ReCamMaster cameras move up to "
                                       "~2 units, so with radius 1 a dolly leaves the sphere; a larger radius compares "
                                       "viewing directions only. Non-default radii are cached separately."),
            ],
            outputs=[
                Selection.Output(display_name="selection",
                                 tooltip="The retrieved memories, best first, for Dynamic Tokenize."),
                io.String.Output(display_name="scores",
                                 tooltip="Every entry's IoU, containment, score and rank as a text table."),
            ],
        )

    @classmethod
    def execute(cls, bank, camera: Trajectory, top_k: int, lam: float, sphere_radius: float) -> io.NodeOutput:
        selection, rows = select_by_fov(bank, camera, top_k, lam, FOVParams(radius=sphere_radius))
        table = format_score_table(rows, {row["entry_id"]: bank.entry(row["entry_id"]).prompt for row in rows})
        scope = bank.retrieval_scope()
        table += f"\n({scope})" if scope else ""  # say why entries the artist remembers are not listed
        if top_k == 0:  # said on the node: a 0 left in the widget silently turns memory off otherwise
            table = "top_k = 0: memory off (nothing retrieved)\n" + table
        # For the bank browser (web/bank_browser.js): what this run retrieved, by full id, without parsing the table.
        retrieved = {"bank": bank.name, "node": "FOV Retrieve",
                     "entries": [{"id": row["entry_id"], "rank": row["rank"], "score": row["score"]}
                                 for row in rows if row["rank"] is not None]}
        return io.NodeOutput(selection, table, ui={"text": [table], "memv2v_retrieved": [retrieved]})


NODES = [FOVRetrieve]
