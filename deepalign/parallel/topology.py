"""The accelerator slices a preset is sized for: chip count and memory per chip.

    topology = get_topology('v5e-8')     # Topology(name='v5e-8', chips=8, hbm_bytes=16 GiB, ...)

`config.parallel.topology` names one; `deepalign.plan` compiles a stage's step for that many
(simulated) devices and holds XLA's per-device memory plan against `hbm_bytes`. The mesh itself is
derived from the device count at run time (`mesh_shape` `{'fsdp': -1}`), so the same preset
builds on any slice; the topology says which slice its batch sizes were chosen for.

Figures (Cloud TPU documentation, per chip): v5e 16 GiB HBM2; v5p 95 GiB HBM2e (`v5p-32` is 32
TensorCores = 16 chips); v6e (Trillium) 32 GiB. 'cpu' is this machine: its local devices and its
RAM.
"""

from __future__ import annotations

import dataclasses
import os

from deepalign.errors import UserError

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Topology:
  """A slice: `chips` devices of `hbm_bytes` memory each (0 chips: whatever devices exist)."""
  name: str
  chips: int
  hbm_bytes: int
  description: str

  @property
  def hbm_gib(self) -> float:
    return self.hbm_bytes / GiB


TOPOLOGIES: dict[str, Topology] = {
    'v5e-8': Topology('v5e-8', 8, 16 * GiB, 'TPU v5e, 8 chips (2x4), 16 GiB HBM each'),
    'v5e-16': Topology('v5e-16', 16, 16 * GiB, 'TPU v5e, 16 chips (4x4), 16 GiB HBM each'),
    'v5p-32': Topology('v5p-32', 16, 95 * GiB, 'TPU v5p, 16 chips (32 TensorCores), 95 GiB HBM each'),
    'v6e-8': Topology('v6e-8', 8, 32 * GiB, 'TPU v6e (Trillium), 8 chips (2x4), 32 GiB HBM each'),
    'cpu': Topology('cpu', 0, 0, "this machine's local devices and RAM"),
}


def _host_memory_bytes() -> int:
  try:
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  except (ValueError, OSError, AttributeError):
    return 0


def get_topology(name: str) -> Topology:
  """The `Topology` called `name`; 'cpu' resolves its memory to this machine's RAM."""
  if name not in TOPOLOGIES:
    raise UserError(f"topology '{name}' is unknown; use one of {', '.join(TOPOLOGIES)}")
  topology = TOPOLOGIES[name]
  if name == 'cpu':
    topology = dataclasses.replace(topology, hbm_bytes=_host_memory_bytes())
  return topology


def device_count(topology: Topology, available: int) -> int:
  """How many devices a run on `topology` uses: its chips, or all `available` for 'cpu'."""
  return topology.chips or available
