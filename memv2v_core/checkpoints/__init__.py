"""Model files: read checkpoints safely (``files``) and find the modules ReCamMaster / Memory-V2V add to the Wan DiT
(``modules``)."""

from .files import (CHECKPOINT_SUFFIXES, CheckpointError, CheckpointIndex, TensorInfo, read_checkpoint_index,
                    read_state_dict_keys, read_tensors)
from .modules import (COMFY_STRIPPED_PREFIXES, CameraWeights, ConvMergeOperator, MemV2VModules, ModuleReport,
                      convert_to_safetensors, identify_modules, inspect_checkpoint, load_modules)
