"""Stage 1, the memory bank: one safetensors file per entry, an atomic JSON manifest, a writer lock (format:
``docs/bank-format.md``). ``MemoryBank`` is the API; ``contact_sheet`` draws what a bank holds."""

from .contact_sheet import LatentPreview, contact_sheet
from .inputs import check_latent_format, safe_bank_dir, validate_bank_name, validate_branch_name, validate_entry_id
from .memory_bank import MemoryBank
from .provenance import RunProvenance, run_provenance
from .records import (BankFormatError, BankStateError, DamagedEntryError, MemoryEntry, NewerSchemaError,
                      UnknownEntryError)
from .storage import LockTimeout
