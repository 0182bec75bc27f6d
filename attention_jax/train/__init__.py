"""Training: optimizer, compiled step, checkpoints, logs, data parallelism, the loop.

Typical use (see ``experiments/`` for complete scripts)::

    from attention_jax import train as T

    tx = T.make_optimizer(1e-3, warmup_steps=100, decay_steps=2000, end_lr=1e-4)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    batch_fn = lambda step, data: random_windows(
        jax.random.fold_in(key, step), data, batch_size=12, block_size=64)
    result = T.train(model, optimizer, batch_fn, data=train_tokens, steps=2000,
                     log_dir="out/run", checkpoint_dir="out/run/ckpt", resume=True)
"""

from attention_jax.train.checkpoint import Checkpointer, load_params
from attention_jax.train.host_memory import tune_host_malloc
from attention_jax.train.logging import (
    MetricsLogger,
    count_params,
    plot_history,
    read_jsonl,
    write_json,
)
from attention_jax.train.loop import TrainResult, train
from attention_jax.train.loss import cross_entropy, lm_loss, unpack_batch
from attention_jax.train.optim import decay_mask, make_optimizer, make_schedule
from attention_jax.train.sharding import (
    DATA_AXIS,
    SEQUENCE_AXIS,
    batch_sharding,
    constrain_batch,
    data_mesh,
    fsdp_spec,
    make_mesh,
    maybe_initialize_distributed,
    place,
    replicated,
    sequence_size,
    state_shardings,
)
from attention_jax.train.step import TrainStep, make_eval_fn, step_key
