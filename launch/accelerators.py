"""What a Cloud TPU accelerator type is: chips, hosts (= JAX processes), topology, the names gcloud and
GKE give it.

  slice = accelerators.parse('v5p-32')   # 16 chips on 4 hosts of 4, topology 2x2x4
  slice = accelerators.parse('v5e-8')    # gcloud's v5litepod-8: 8 chips on one host, 2x4

The number in a v4 / v5p name counts TensorCores (two a chip); in a v5e / v6e name, chips (one
TensorCore each). Hosts hold 4 chips, except single-host v5e / v6e slices of up to 8 chips.
Source: the Cloud TPU system architecture pages (cloud.google.com/tpu/docs/v4, v5p, v5e, v6e)
and the GKE TPU pages (node selector labels, topologies).
"""

from __future__ import annotations

import dataclasses
import re

from deepalign.errors import UserError


@dataclasses.dataclass(frozen=True)
class Generation:
  gcloud_prefix: str       # how gcloud spells the type: 'v5litepod' for v5e
  cores_per_chip: int
  dims: int                # 3D torus (v4, v5p) or 2D (v5e, v6e)
  single_host_chips: int   # the largest slice on one host
  runtime_version: str     # the TPU VM software version to create it with
  gke_accelerator: str     # node label cloud.google.com/gke-tpu-accelerator


GENERATIONS = {
    'v4': Generation('v4', 2, 3, 4, 'tpu-ubuntu2204-base', 'tpu-v4-podslice'),
    'v5p': Generation('v5p', 2, 3, 4, 'v2-alpha-tpuv5', 'tpu-v5p-slice'),
    'v5e': Generation('v5litepod', 1, 2, 8, 'v2-alpha-tpuv5-lite', 'tpu-v5-lite-podslice'),
    'v6e': Generation('v6e', 1, 2, 8, 'v2-alpha-tpuv6e', 'tpu-v6e-slice'),
}
_ALIASES = {'v5litepod': 'v5e', 'v5lite': 'v5e'}
CHIPS_PER_MULTI_HOST = 4
# Which axis doubles next as a slice grows (2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, 4x4x8, ...;
# 2x2, 2x4, 4x4, 4x8, 8x8, ...): the shapes the TPU pages list for power-of-two slices.
_GROWTH = {3: (0, 1, 2, 2, 1, 0), 2: (0, 1, 1, 0)}


@dataclasses.dataclass(frozen=True)
class Slice:
  name: str                # as given, e.g. 'v5e-8'
  generation: str          # 'v5e'
  gcloud_type: str         # gcloud's --accelerator-type, e.g. 'v5litepod-8'
  chips: int
  hosts: int               # TPU VM workers = JAX processes
  chips_per_host: int
  topology: str            # e.g. '2x2x4' (GKE's cloud.google.com/gke-tpu-topology)
  runtime_version: str
  gke_accelerator: str

  @property
  def multi_host(self) -> bool:
    return self.hosts > 1


def _topology(chips: int, dims: int) -> str:
  shape = [1] * dims
  growth = _GROWTH[dims]
  i = 0
  while shape[0] * shape[1] * (shape[2] if dims == 3 else 1) < chips:
    axis = growth[i] if i < len(growth) else (dims - 1 - (i - len(growth)) % dims)
    shape[axis] *= 2
    i += 1
  return 'x'.join(map(str, shape))


def parse(accelerator_type: str) -> Slice:
  """The slice an accelerator type names ('v5p-32', 'v5e-8' or 'v5litepod-8', 'v4-16', 'v6e-64')."""
  match = re.fullmatch(r'(v\d+[a-z]*)-(\d+)', accelerator_type.strip().lower())
  if not match:
    raise UserError(f"accelerator type '{accelerator_type}' is not like v5p-32, v5e-8, v4-16 or v6e-64")
  family, number = _ALIASES.get(match.group(1), match.group(1)), int(match.group(2))
  if family not in GENERATIONS:
    raise UserError(f"accelerator type '{accelerator_type}': unknown TPU generation {match.group(1)}; "
                    f"known: {', '.join(GENERATIONS)}")
  gen = GENERATIONS[family]
  chips = number // gen.cores_per_chip
  if chips < 1 or number % gen.cores_per_chip or chips & (chips - 1):
    raise UserError(f"accelerator type '{accelerator_type}': {number} is not a slice size of {family} "
                    f'(a power of two{" number of TensorCores, two a chip" if gen.cores_per_chip == 2 else " number of chips"})')
  per_host = chips if chips <= gen.single_host_chips else CHIPS_PER_MULTI_HOST
  return Slice(name=accelerator_type, generation=family, gcloud_type=f'{gen.gcloud_prefix}-{number}',
               chips=chips, hosts=chips // per_host, chips_per_host=per_host,
               topology=_topology(chips, gen.dims), runtime_version=gen.runtime_version,
               gke_accelerator=gen.gke_accelerator)
