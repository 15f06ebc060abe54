"""The compiled training program of one stage (JAX: a pure function of the state; TensorFlow: one graph)."""

import numpy as np

from sd_keras.errors import InputError
from sd_keras.train.losses import make_training_graph
from sd_keras.train.lora import enable_lora
from sd_keras.train.schedule import learning_rate_schedule

DRAWS_PER_STEP = 16  # random draws a step may take from its seed (keeps the seeds of two steps apart)


class StageRunner:
    """Builds and runs the compiled training program of one stage.

    JAX: the program is a pure function of (weights, optimizer values, EMA, batch) (``stateless_call`` +
    ``optimizer.stateless_apply``) and the runner keeps those values between calls. TensorFlow (whose optimizers
    have no stateless form): the same step updates the Keras variables inside one ``tf.function`` graph.
    """

    def __init__(self, parts, stage, steps, model_config, empty_tokens, seed_base):
        import keras

        from sd_keras import backend

        self.parts, self.stage, self.steps = parts, stage, steps
        components = set(stage.components)
        self.trains_vae = "vae" in components
        self.trains_diffusion = bool(components & {"text_encoder", "unet"})
        self.lora_layers = []
        if stage.lora_rank:
            self.lora_layers = enable_lora(parts.diffusion_model, stage.lora_rank, alpha=stage.lora_alpha,
                                           targets=tuple(stage.lora_targets))
        self._set_trainable()
        self.graph = make_training_graph(parts, stage, model_config, self.trains_vae, self.trains_diffusion,
                                         empty_tokens)
        self.trainable_variables = list(self.graph.trainable_variables)
        self.non_trainable_variables = list(self.graph.non_trainable_variables)
        schedule = learning_rate_schedule(stage.learning_rate, stage.warmup_steps, steps, stage.lr_schedule,
                                          stage.min_lr_ratio)
        common = dict(learning_rate=schedule, beta_1=stage.beta_1, beta_2=stage.beta_2, epsilon=stage.epsilon,
                      global_clipnorm=stage.grad_clip)
        if stage.optimizer == "adamw":
            self.optimizer = keras.optimizers.AdamW(weight_decay=stage.weight_decay, **common)
            self.optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "embeddings"])
        else:
            self.optimizer = keras.optimizers.Adam(**common)
        self.optimizer.build(self.trainable_variables)
        # what reset() restores when the same compiled program trains a new run
        self._initial_optimizer = [np.asarray(v.numpy()) for v in self.optimizer.variables]
        self._initial_lora = [(v, np.asarray(v.numpy())) for v in parts.diffusion_model.weights
                              if "lora_kernel" in v.path]
        self.seed_generator = keras.random.SeedGenerator(0)
        self.seed_base = seed_base
        self.latent_channels = model_config.vae.latent_channels
        self.factor = model_config.vae.downsample_factor
        self.use_ema = stage.ema_decay > 0
        self.stateless = backend.name() == "jax"
        if backend.name() not in ("jax", "tensorflow"):
            raise InputError(f"training needs the JAX or TensorFlow backend, not {backend.name()!r}")
        if self.stateless:
            self._program = backend.jit(self._stateless_program)
        else:
            # from numpy copies: given a variable's value, TensorFlow would wrap the same storage
            self.ema_variables = [keras.Variable(np.array(v.numpy()), trainable=False, name="ema")
                                  for v in self.trainable_variables] if self.use_ema else []
            import tensorflow as tf

            # A graph without XLA: XLA's compile of this training graph takes twice as long on CPU as building the
            # graph, and TensorFlow is the CPU / test path here (JAX is the accelerator path).
            self._program = tf.function(self._stateful_program, jit_compile=False, reduce_retracing=False)
        self.restore([v.numpy() for v in self.optimizer.variables], None)

    def _set_trainable(self):
        for _, model in self.parts.items():
            model.trainable = False
        for component in self.stage.components:
            for model in self.parts.for_component(component):
                model.trainable = True
        if self.lora_layers:  # only the adapters
            for variable in self.parts.diffusion_model.weights:
                variable.trainable = "lora_kernel" in variable.path

    def activate(self):
        """Give the models this stage's trainable flags again (another stage's runner may have changed them);
        a retrace of the program (e.g. for a shorter last call) then sees the same variable lists."""
        self._set_trainable()
        if [id(v) for v in self.graph.trainable_variables] != [id(v) for v in self.trainable_variables]:
            raise RuntimeError("the trainable variables of a stage changed after its program was built")

    def reset(self):
        """Fresh optimizer, LoRA adapters and EMA (from the current weights), for a new run."""
        for variable, value in self._initial_lora:
            variable.assign(value)
        self.restore(self._initial_optimizer, None)

    @property
    def term_names(self):
        names = ["loss"]
        if self.trains_vae:
            names += ["recon", "kl", "latent_moment"] + (["edge"] if self.stage.edge_weight else [])
        if self.trains_diffusion:
            names += ["mse"]
        return names

    # -- pieces shared by both programs
    def _random_inputs(self, batch, step):
        """Noise, timesteps and caption dropout of one step, drawn from a seed that depends only on the step."""
        import keras
        from keras import ops

        generator = self.seed_generator
        seed = ops.cast(ops.stack([ops.convert_to_tensor(self.seed_base, "int32"),
                                   ops.cast(step, "int32") * DRAWS_PER_STEP]), generator.state.dtype)
        first = batch["tokens"] if "tokens" in batch else batch["images"]
        batch_size = ops.shape(first)[0]
        inputs = dict(batch)
        with keras.StatelessScope(state_mapping=[(generator.state, seed)]):
            if self.trains_diffusion:
                if "latents" in batch:
                    shape = tuple(batch["latents"].shape[1:])
                else:
                    side = batch["images"].shape[1] // self.factor
                    shape = (side, side, self.latent_channels)
                inputs["noise"] = keras.random.normal((batch_size,) + shape, seed=generator)
                inputs["timesteps"] = keras.random.randint((batch_size,), 0, 1000, seed=generator, dtype="int32")
                inputs["drop"] = keras.random.uniform((batch_size,), seed=generator) < self.stage.caption_dropout
            if self.trains_vae:
                side = batch["images"].shape[1] // self.factor
                inputs["posterior_noise"] = keras.random.normal((batch_size, side, side, self.latent_channels),
                                                                seed=generator)
        return inputs

    def _ema_decay(self, step):
        from keras import ops

        count = ops.cast(step, "float32")
        return ops.minimum(self.stage.ema_decay, (1.0 + count) / (10.0 + count))

    def _loop(self, one_step, carry, batches, first_step):
        """Run ``one_step`` for each of the ``count`` batches (axis 1); returns (carry, mean loss terms)."""
        from keras import ops

        count = batches["tokens"].shape[1] if "tokens" in batches else batches["images"].shape[1]
        if count == 1:
            return one_step(carry, {k: v[:, 0] for k, v in batches.items()}, first_step)

        def body(i, loop_carry):
            carry, totals = loop_carry
            carry, terms = one_step(carry, {k: ops.take(v, i, axis=1) for k, v in batches.items()}, first_step + i)
            return carry, {k: totals[k] + terms[k] / count for k in totals}

        zero = {key: ops.zeros((), "float32") for key in self.term_names}
        return ops.fori_loop(0, count, body, (carry, zero))

    # -- JAX
    def _stateless_program(self, state, batches, first_step):
        import jax
        from keras import ops

        def one_step(state, batch, step):
            trainable, non_trainable, optimizer_values, ema = state
            inputs = self._random_inputs(batch, step)

            def loss_fn(trainable_values):
                terms, new_non_trainable = self.graph.stateless_call(trainable_values, non_trainable, inputs)
                return terms["loss"], (terms, new_non_trainable)

            (_, (terms, non_trainable)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
            trainable, optimizer_values = self.optimizer.stateless_apply(optimizer_values, grads, trainable)
            if self.use_ema:
                decay = self._ema_decay(step)
                ema = [e * decay + ops.cast(t, e.dtype) * (1.0 - decay) for e, t in zip(ema, trainable)]
            return (trainable, non_trainable, optimizer_values, ema), terms

        return self._loop(one_step, state, batches, first_step)

    # -- TensorFlow
    def _stateful_program(self, batches, first_step):
        import tensorflow as tf

        def one_step(carry, batch, step):
            inputs = self._random_inputs(batch, step)
            with tf.GradientTape() as tape:
                terms = self.graph(inputs)
            grads = tape.gradient(terms["loss"], self.trainable_variables)
            # dense gradients: the sparse (IndexedSlices) updates of the token embedding compile far slower in XLA
            grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                     for g, v in zip(grads, self.trainable_variables)]
            self.optimizer.apply(grads, self.trainable_variables)
            if self.use_ema:
                decay = self._ema_decay(step)
                for ema, variable in zip(self.ema_variables, self.trainable_variables):
                    ema.assign(ema * decay + tf.cast(variable, ema.dtype) * (1.0 - decay))
            return carry + 1, terms

        _, terms = self._loop(one_step, tf.constant(0), batches, first_step)
        return terms

    # -- host side
    def run(self, batches, first_step):
        """Train on ``batches`` (arrays of shape (batch, count, ...)): ``count`` steps from ``first_step``."""
        from sd_keras import backend

        batches = {k: backend.shard_batch(v) for k, v in batches.items()}
        if self.stateless:
            self.state, terms = self._program(self.state, batches, np.int32(first_step))
        else:
            terms = self._program(batches, np.int32(first_step))
        return terms

    def optimizer_and_ema(self):
        """Current optimizer and EMA values as numpy arrays (for checkpoints)."""
        from sd_keras import backend

        if self.stateless:
            optimizer_values, ema = self.state[2], self.state[3]
        else:
            optimizer_values = [v.value for v in self.optimizer.variables]
            ema = [v.value for v in self.ema_variables]
        return [np.asarray(backend.to_numpy(v)) for v in optimizer_values], [np.asarray(backend.to_numpy(v))
                                                                               for v in ema]

    def restore(self, optimizer_values, ema_values):
        """Load optimizer and EMA values (after the weights were assigned to the variables).

        ``ema_values`` None starts the EMA at the current weights.
        """
        import keras

        for variable, value in zip(self.optimizer.variables, optimizer_values):
            variable.assign(value)
        if ema_values is None:
            ema_values = [v.numpy() for v in self.trainable_variables] if self.use_ema else []
        if self.stateless:
            self.state = ([v.value for v in self.trainable_variables], [v.value for v in self.non_trainable_variables],
                          [v.value for v in self.optimizer.variables],
                          [keras.ops.convert_to_tensor(value) for value in ema_values])
        else:
            for variable, value in zip(self.ema_variables, ema_values):
                variable.assign(value)

    def write_back(self, use_ema=False):
        """Make the Keras variables hold the trained (or, with ``use_ema``, the EMA) weights."""
        if self.stateless:
            trainable, non_trainable, optimizer_values, ema = self.state
            for variable, value in zip(self.non_trainable_variables, non_trainable):
                variable.assign(value)
            for variable, value in zip(self.optimizer.variables, optimizer_values):
                variable.assign(value)
        else:
            trainable, ema = None, [v.value for v in self.ema_variables]
        if use_ema and self.use_ema:
            trainable = ema
        if trainable is not None:
            for variable, value in zip(self.trainable_variables, trainable):
                variable.assign(value)
