"""Data and context parallelism over a device mesh (axes ``"data"`` and ``"sequence"``),
single- or multi-host.

One code path for any number of devices: the batch is split along its first dimension
over the mesh axis ``"data"`` (and, on a mesh with an axis ``"sequence"``, the tokens along
the second over ``"sequence"``: context parallelism, see
:func:`attention_jax.context_parallel_attention`) and the training state is replicated, or, with
``shard_params=True``, split FSDP-style along each array's largest dimension that the
mesh size divides (XLA inserts the all-gathers and reduce-scatters). With one device the
mesh has one entry and every sharding is trivial.

Multi-host: call :func:`maybe_initialize_distributed` before anything touches a device;
each process then sees all devices of the job in ``jax.devices()`` and the same program
runs everywhere (SPMD).
"""

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from attention_jax.parallel import DATA_AXIS, SEQUENCE_AXIS

__all__ = [
    "DATA_AXIS",
    "SEQUENCE_AXIS",
    "make_mesh",
    "maybe_initialize_distributed",
    "data_mesh",
    "replicated",
    "batch_sharding",
    "fsdp_spec",
    "state_shardings",
    "constrain_batch",
    "sequence_size",
    "place",
]


def maybe_initialize_distributed() -> bool:
    """Calls ``jax.distributed.initialize()`` when the environment describes a multi-process job.

    Recognized environments:

    * ``JAX_COORDINATOR_ADDRESS=host:port`` with ``JAX_NUM_PROCESSES`` and
      ``JAX_PROCESS_ID`` (explicit; works anywhere);
    * a SLURM job step with more than one task (``SLURM_NTASKS > 1``), or an Open MPI
      launch (``OMPI_COMM_WORLD_SIZE > 1``): JAX detects coordinator, process count and id.

    Must run before the first JAX computation. Does nothing (returns False) in a
    single-process setting, so scripts can call it unconditionally.

    Returns:
      True if the distributed runtime was initialized.
    """
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        nproc = os.environ.get("JAX_NUM_PROCESSES")
        pid = os.environ.get("JAX_PROCESS_ID")
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(nproc) if nproc is not None else None,
            process_id=int(pid) if pid is not None else None,
        )
        return True
    if (
        int(os.environ.get("SLURM_NTASKS", "1")) > 1
        or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    ):
        jax.distributed.initialize()
        return True
    return False


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (default: all of the job's devices)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def make_mesh(*, data: int | None = None, sequence: int = 1, devices=None) -> Mesh:
    """A 2-D mesh ``("data", "sequence")`` of ``data * sequence`` devices.

    ``sequence > 1`` splits every sequence over that many devices (context parallelism:
    models whose config sets ``context_parallel`` run their attention through
    :func:`attention_jax.context_parallel_attention`); the batch is split over ``data``.
    Devices are laid out with ``"sequence"`` fastest, so a sequence group stays within a
    host where it can (its ring or all-to-all traffic is the heaviest).

    Args:
      data: size of the data axis (default: all devices / ``sequence``).
      sequence: size of the sequence axis.
      devices: the devices to use (default: all of the job's).

    Raises:
      ValueError: sizes that are not positive or do not match the number of devices.
    """
    devices = jax.devices() if devices is None else list(devices)
    n = len(devices)
    if not isinstance(sequence, int) or sequence < 1 or n % sequence:
        raise ValueError(
            f"make_mesh: sequence must be an int >= 1 dividing the {n} devices, got {sequence!r}."
        )
    if data is None:
        data = n // sequence
    if not isinstance(data, int) or data < 1 or data * sequence != n:
        raise ValueError(
            f"make_mesh: data * sequence must equal the {n} devices, got data={data!r}, "
            f"sequence={sequence!r}."
        )
    grid = np.asarray(devices).reshape(data, sequence)
    return Mesh(grid, (DATA_AXIS, SEQUENCE_AXIS))


def sequence_size(mesh: Mesh) -> int:
    """The size of the mesh's ``"sequence"`` axis (1 if it has none)."""
    return dict(mesh.shape).get(SEQUENCE_AXIS, 1)


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """First dimension split over ``"data"``; for arrays of ``ndim >= 2`` on a mesh with a
    ``"sequence"`` axis, the second (the tokens) over it; the rest whole."""
    if ndim >= 2 and sequence_size(mesh) > 1:
        return NamedSharding(mesh, P(DATA_AXIS, SEQUENCE_AXIS))
    return NamedSharding(mesh, P(DATA_AXIS))


def fsdp_spec(shape: tuple[int, ...], num_shards: int) -> P:
    """Split the largest dimension that ``num_shards`` divides; replicate if none does.

    Args:
      shape: the array's shape.
      num_shards: mesh size along ``"data"``.

    Returns:
      A ``PartitionSpec`` naming ``"data"`` at that dimension (ties: the first), or ``P()``.
    """
    if num_shards <= 1:
        return P()
    candidates = [(d, -i) for i, d in enumerate(shape) if d % num_shards == 0 and d >= num_shards]
    if not candidates:
        return P()
    _, neg_i = max(candidates)
    spec = [None] * len(shape)
    spec[-neg_i] = DATA_AXIS
    return P(*spec)


def state_shardings(state, mesh: Mesh, *, shard_params: bool = False):
    """Shardings for a training-state pytree: replicated, or FSDP with ``shard_params``.

    Args:
      state: pytree of arrays (parameters and optimizer state alike: Adam's moments have
        the parameters' shapes, so they shard the same way).
      mesh: a mesh from :func:`data_mesh` or :func:`make_mesh` (replicated over
        ``"sequence"``).
      shard_params: split each array per :func:`fsdp_spec` instead of replicating it.

    Returns:
      A pytree of ``NamedSharding`` with the structure of ``state``.
    """
    n = mesh.shape[DATA_AXIS]
    if not shard_params:
        return jax.tree.map(lambda _: replicated(mesh), state)
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(np.shape(x), n)), state)


def place(tree, shardings):
    """``jax.device_put(tree, shardings)`` that also works across processes.

    With one process this is ``device_put``. In a multi-process job a process can only
    write its own devices, so every array (which must hold the same value in every
    process, e.g. parameters initialized from the same seed) is assembled from its host
    copy with ``jax.make_array_from_callback``; arrays that are already global (e.g.
    restored from a checkpoint) are resharded. Typed PRNG keys travel as their key data.

    Args:
      tree: pytree of arrays.
      shardings: a sharding, or a pytree of them matching ``tree``.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)

    def one(x, sharding):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, sharding)  # already global: a resharding
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = one(jax.random.key_data(x), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree, shardings)


def constrain_batch(batch, mesh: Mesh):
    """Inside ``jit``: pin every array of ``batch`` to be split along its first dimension.

    Scalars are replicated. Raises at trace time if a batch dimension is not divisible
    by the number of devices.
    """
    n = mesh.shape[DATA_AXIS]
    p = sequence_size(mesh)

    def leaf(x):
        if n == 1 and p == 1:
            return x
        if x.ndim == 0:
            return jax.lax.with_sharding_constraint(x, replicated(mesh))
        if x.shape[0] % n:
            raise ValueError(
                f"batch dimension {x.shape[0]} (array of shape {x.shape}) is not divisible "
                f"by the {n} devices of the data mesh."
            )
        if x.ndim >= 2 and p > 1 and x.shape[1] % p:
            raise ValueError(
                f"sequence dimension {x.shape[1]} (array of shape {x.shape}) is not divisible "
                f"by the {p} devices of the mesh axis 'sequence'."
            )
        return jax.lax.with_sharding_constraint(x, batch_sharding(mesh, x.ndim))

    return jax.tree.map(leaf, batch)
