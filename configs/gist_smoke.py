"""A seconds-long gisting run that exercises the whole pipeline (not a result): 5 steps, batch 2, 128 tokens.

    python launch/train_gist.py --config=configs/gist_smoke.py --config.workdir=/tmp/gist_smoke/gist
"""

from configs.gist import get_config as gist_config


def get_config():
    c = gist_config()
    c.data.max_length = 128
    c.data.max_train_examples = 64
    c.data.num_eval_examples = 4
    c.train.batch_size = 2
    c.train.num_steps = 5
    c.train.log_every = 1
    c.train.eval_every = 5
    c.ckpt.every = 5
    c.ckpt.keep = 1
    c.logging.progress_bar = False
    return c
