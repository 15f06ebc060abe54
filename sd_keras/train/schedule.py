"""The learning-rate schedule of a stage: warm-up, then constant / cosine / linear decay."""

import math


def learning_rate_schedule(peak, warmup, total, kind, min_ratio):
    """A Keras ``LearningRateSchedule``: linear warm-up over ``warmup`` steps to ``peak``, then ``kind`` decay
    (``constant`` | ``cosine`` | ``linear``) to ``min_ratio * peak`` at step ``total``."""
    import keras
    from keras import ops

    class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            step = ops.cast(step, "float32")
            warm = ops.minimum(1.0, (step + 1.0) / float(max(warmup, 1)))
            progress = ops.clip((step - warmup) / float(max(total - warmup, 1)), 0.0, 1.0)
            if kind == "cosine":
                decay = min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + ops.cos(math.pi * progress))
            elif kind == "linear":
                decay = 1.0 - (1.0 - min_ratio) * progress
            else:
                decay = ops.ones_like(progress)
            return peak * warm * decay

        def get_config(self):
            return {"peak": peak, "warmup": warmup, "total": total, "kind": kind, "min_ratio": min_ratio}

    return WarmupDecay()
