"""Stage 3, memory tokens: dynamic tokenization (``tokenize``), disjoint temporal positions (``positions``), the
memory context a sampling run carries (``context``, with per-video camera rows in ``camera_rows``), adaptive token
merging (``merge``), the token stream through the DiT blocks (``stream``) and its cost formulas (``flops``)."""

from .context import MemoryContext, build_context, embed_context, token_budget
from .merge import merge_frames, merge_plan
from .positions import temporal_ids
from .stream import MemoryStreamState, MergeSettings
from .tokenize import KernelPlan
