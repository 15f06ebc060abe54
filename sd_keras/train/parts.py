"""The models a training run updates: the four sub-models plus the encoder's moments head."""

from sd_keras.errors import InputError
from sd_keras.train.config import config_differences


class Parts:
    """Every component of the model family (``sd_keras.models.COMPONENTS``: text encoder, UNet, decoder, image
    encoder), each an attribute, plus the encoder's moments head (shares the image encoder's layers).

    All of them compute under the training ``policy`` (mixed precision keeps float32 variables).
    """

    def __init__(self, model_config, policy):
        import keras

        from sd_keras import models

        self.config = model_config
        self.names = models.components(model_config)
        for name in self.names:
            setattr(self, name, models.build(name, model_config, policy))
        self.encoder_moments = keras.Model(self.image_encoder.input,
                                           self.image_encoder.get_layer("quant_conv").output, name="encoder_moments")

    def items(self):
        return [(name, getattr(self, name)) for name in self.names]

    def for_component(self, component):
        """The models a config component (``vae``, ``text_encoder``, ``unet``: the model config's part) trains."""
        from sd_keras.models import registry

        return [getattr(self, name) for name in self.names
                if registry.component(name, self.config).config_field == component]

    def tensors(self):
        from sd_keras import models

        return {f"{name}/{key}": value for name, model in self.items() for key, value in models.tensors(model).items()}

    def keys(self):
        """``{id(variable): "<component>/<variable path>"}``: the checkpoint key of every weight."""
        from sd_keras import models

        return {id(variable): f"{name}/{models.variable_key(model, variable)}" for name, model in self.items()
                for variable in model.weights}

    def assign(self, tensors, source, *, partial=False):
        """Assign ``<component>/<path>`` tensors; ``partial`` assigns only the keys given (shapes checked)."""
        from sd_keras import models

        for name, model in self.items():
            prefix = name + "/"
            values = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if not partial:
                models.assign(model, values, source=source)
                continue
            for variable in model.weights:
                value = values.get(models.variable_key(model, variable))
                if value is not None:
                    if tuple(value.shape) != tuple(variable.shape):
                        raise InputError(f"{source}: {name}/{variable.path} has shape {value.shape}")
                    variable.assign(value)

    def load_init(self, spec):
        """Copy the weights of a preset or saved folder with the same architecture."""
        from sd_keras import models
        from sd_keras.pipeline import StableDiffusion
        from sd_keras.weights.saved import is_saved_folder

        if is_saved_folder(spec):
            source = StableDiffusion.from_checkpoint(spec)
        else:
            try:
                source = StableDiffusion.from_preset(spec)
            except ValueError as error:
                raise InputError(f"model.init: {spec!r} is neither a saved model folder nor a usable preset "
                                 f"({error})") from None
        # The native image size is no part of the weights: fine-tuning at another size is allowed here
        # (a resumed checkpoint must match exactly, image size included: its data depends on it).
        differences = config_differences(source.config.to_dict(), self.config.to_dict(),
                                         ignore=("name", "image_size"))
        if differences:
            raise InputError(f"model.init: {spec!r} has another architecture: {'; '.join(differences[:6])}")
        for name, model in self.items():
            other = getattr(source, name, None)
            if other is None:
                raise InputError(f"model.init: {spec!r} has no {name}")
            models.assign(model, models.tensors(other), source=f"model.init {spec}")
