"""'Segment automatically': micro-sam's automatic instance segmentation (AIS) in the dock.

One encoder pass (re-used when the image's embedding with this model is already computed), one
pass of the model's AIS decoder and a seeded watershed label every object of the current 2D image
or volume slice, into an '<image> automatic' Labels layer. The model logic is the core's
(`mobilesam.instance_segmentation`); here are only the section, the decoder file resolution (as
the CLI `mobilesam ais` does it) and the wiring into the widget's background task.

Only models with a decoder (vit_t_lm, vit_t_em_organelles) can do it: for the others the button
is disabled and its tooltip says which models to choose.
"""

import os
from pathlib import Path

from magicgui.widgets import Label, PushButton

from mobilesam.errors import MissingWeightsError, MobileSamError
from mobilesam.instance_segmentation import DECODER_CHECKPOINT_ENV, ais_model_types, decoder_weights_name
from mobilesam.progress import raise_if_cancelled

from ._sections import Section, _wrapping

AIS_MODELS = ais_model_types()
LAYER_SUFFIX = "automatic"


class MissingDecoderError(MobileSamError):
    """The chosen model's AIS decoder weights are nowhere to be found (nor downloadable)."""


class AutomaticSection(Section):
    def __init__(self) -> None:
        self.automatic_button = PushButton(text="Segment automatically (image / current slice)")
        self.decoder_weights = _wrapping(Label(label="Decoder", value="-"))
        super().__init__(
            "Segment automatically (micro-sam models)",
            [self.automatic_button, self.decoder_weights],
            collapsed=True,
        )


class AutomaticSegmentation:
    """The section's behaviour in `widget` (a `MobileSamWidget`): enabling, running, showing."""

    def __init__(self, widget, section: AutomaticSection) -> None:
        self.widget = widget
        self.section = section
        self._decoder = None  # (file identity, loaded decoder): loaded once per file and image size
        section.automatic_button.changed.connect(lambda _=None: self.segment_automatically())
        widget.model_type.changed.connect(self.update)
        widget.checkpoint.changed.connect(self.update)
        self.update()

    def update(self, _value=None) -> None:
        """Enable the button for models with a decoder; say which decoder file will be used."""
        model_type = self.widget.model_type.value
        button, label = self.section.automatic_button, self.section.decoder_weights
        if model_type not in AIS_MODELS:
            button.enabled = False
            button.tooltip = (
                f"{model_type} has no automatic instance segmentation decoder; choose "
                f"{' or '.join(AIS_MODELS)} in the Model section"
            )
            label.value = "-"
            return
        button.enabled = True
        button.tooltip = (
            f"Label every object of the image (or the current slice) with {model_type}'s instance "
            f"segmentation decoder (also with a checkpoint file: the decoder is the Model "
            f"choice's): one encoder pass, into '<image> {LAYER_SUFFIX}'"
        )
        label.value = _describe_decoder_file(decoder_weights_name(model_type))

    def segment_automatically(self) -> None:
        """Instance labels of the current 2D image or slice, into '<image> automatic' Labels."""
        from ._layers import current_slice

        widget = self.widget
        model_type = widget.model_type.value
        if model_type not in AIS_MODELS:
            widget._notify(
                "warning",
                f"MobileSAM: {model_type} has no automatic instance segmentation decoder; "
                f"choose {' or '.join(AIS_MODELS)}",
            )
            return
        current = widget._current_image()
        if current is None or widget._refuse_if_busy():
            return
        image_layer, info = current
        z = current_slice(widget.viewer, image_layer) if info.is_volume else 0
        decoder_type = decoder_weights_name(model_type)

        def segment(segmenter, progress, cancel):
            from mobilesam.instance_segmentation import InstanceSegmenter

            predictor = segmenter.predictor
            decoder = self._load_decoder(decoder_type, predictor)
            _check(cancel)
            progress(0, 1)
            segmenter.activate(z)  # the slice's embedding, computed (or found cached) just before
            labels = InstanceSegmenter(predictor.model, decoder, predictor=predictor).segment(None)
            progress(1, 1)
            return labels

        widget._prepare(
            f"MobileSAM: segmenting automatically ({model_type})",
            [z],
            then=lambda labels: widget._show_slice_labels(image_layer, info, z, labels, LAYER_SUFFIX),
            extra=segment,
        )

    def _load_decoder(self, decoder_type: str, predictor):
        """The decoder for the predictor's model (worker thread): resolved as `mobilesam ais` does,
        loaded once per file."""
        from mobilesam.instance_segmentation import load_decoder, resolve_decoder_checkpoint

        try:
            path = Path(resolve_decoder_checkpoint(decoder_type))
        except MissingWeightsError as exc:
            raise MissingDecoderError(
                f"no {decoder_type} weights (the automatic segmentation decoder): {exc} "
                f"You can also set ${DECODER_CHECKPOINT_ENV} to a *_decoder.pt file. "
                "Nothing was changed."
            ) from None
        image_size = predictor.model.image_encoder.img_size
        stat = path.stat()
        identity = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, image_size, str(predictor.device))
        if self._decoder is None or self._decoder[0] != identity:
            self._decoder = (identity, load_decoder(path, image_size=image_size).to(predictor.device))
        return self._decoder[1]


def _describe_decoder_file(decoder_type: str) -> str:
    env = os.environ.get(DECODER_CHECKPOINT_ENV)
    if env:
        return f"{Path(env).name} from ${DECODER_CHECKPOINT_ENV}"
    from mobilesam.weights import cached_path

    cached = cached_path(decoder_type)
    return f"{cached}" + ("" if cached.is_file() else " (downloaded on first use)")


def _check(cancel) -> None:
    raise_if_cancelled(cancel, "automatic segmentation cancelled")


def attach(widget) -> AutomaticSegmentation:
    """Add the section to the widget's sections and wire it (called once from the widget's layout)."""
    section = AutomaticSection()
    widget.automatic_section = section
    widget.automatic_button = section.automatic_button
    widget.sections.append(section)
    return AutomaticSegmentation(widget, section)
