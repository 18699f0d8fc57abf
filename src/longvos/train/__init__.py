"""Training AOT-family models (our default ``mavos-lite`` in particular) on synthetic and video clips.

One file per concern: ``config`` (typed presets + ``key=value`` overrides), ``augment`` / ``clips`` / ``files``
(clip geometry, photometry, compositing), ``data_static`` and ``data_video`` (the two clip sources), ``data`` (the
endless, index-seeded mixed stream), ``losses``, ``schedule`` (learning rate, EMA), ``unroll`` (the unrolled clip
forward), ``checkpoint``, ``distributed`` and ``logger``, and ``loop`` which ties them together::

    from longvos.train.config import load_config
    from longvos.train.loop import train
    config = load_config("configs/mavos-lite.toml", ["optim.steps=100", "run.out_dir=runs/try-1"])
    model = train(config, resume=False)  # a new run: refuses a run.out_dir that already holds a run's files
    # Called again, it is refused: resume=True continues the run saved in runs/try-1 (longer with
    # "optim.steps=200"), and a new run needs another run.out_dir.

On the command line: ``longvos train CONFIG [--resume] [key=value ...]`` (``torchrun`` for several processes).
"""
