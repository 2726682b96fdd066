"""`StandalonePredictor`: `SamPredictor.set_image` / `predict` on exported ONNX models, with
onnxruntime and numpy only.

torch is never imported, which is what makes it small: importing torch alone costs ~500 MB of
resident memory here, more than the whole model at work. Export once where torch is installed
(`mobilesam export-onnx DIR`, or any torch-backed ONNX predictor, which fills
`default_onnx_dir`), then serve or script from the folder. Pre- and postprocessing follow the
torch predictor's (PIL resize, normalise, pad; `mobilesam.postprocess`), so outputs agree with
it within float rounding (see tests/test_onnx_standalone.py).
"""

import os
from pathlib import Path

import numpy as np

from ..errors import MobileSamError
from ..postprocess import postprocess_above, postprocess_logits
from ..runtime import release_free_memory, usable_cpus
from ..transforms import ResizeLongestSide, model_input_prompts, rgb_image
from .layout import PRECISION_FILES, cpu_session, decoder_prompt_inputs, encoder_input

MASK_THRESHOLD = 0.0


class StandalonePredictor:
    """onnx_dir: a folder written by `export_onnx`; precision "fp32" or "int8" (the statically
    quantised encoder, `encoder.int8-static.onnx`, that `mobilesam export-onnx --quantize int8` or
    a torch-backed int8 predictor writes next to the fp32 files, with the fp32 decoder)."""

    image_format = "RGB"
    mask_threshold = MASK_THRESHOLD

    def __init__(
        self, onnx_dir: str | os.PathLike, precision: str = "fp32", num_threads: int | None = None
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MobileSamError(
                "StandalonePredictor needs onnxruntime: pip install 'napari-mobilesam[onnx]'"
            ) from exc
        names = PRECISION_FILES.get(precision)
        if names is None:
            raise ValueError(f"precision must be 'fp32' or 'int8', not {precision!r}")
        paths = [Path(onnx_dir) / name for name in names]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise MobileSamError(
                f"no exported {precision} model in {onnx_dir} (missing {', '.join(missing)}): "
                "export one with `mobilesam export-onnx DIR`"
                + (" --quantize int8" if precision == "int8" else "")
            )
        if precision == "int8":
            from .int8 import warn_without_int8_instructions

            warn_without_int8_instructions()
        self._ort, self._decoder_path, self._threads = ort, paths[1], num_threads or usable_cpus()
        self.encoder = cpu_session(ort, paths[0], self._threads, encoder=True)
        # Loading leaves the model file's bytes free in the heap, under the encoder's peak.
        release_free_memory()
        self._decoder = None  # made after the first encode: see `decoder`
        self.img_size = int(self.encoder.get_inputs()[0].shape[-1])
        self.transform = ResizeLongestSide(self.img_size)
        self.reset_image()

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encode an (H, W, 3) uint8 image in `image_format` ("RGB" or "BGR")."""
        image = rgb_image(image, image_format)
        padded, (h, w) = encoder_input(image, self.img_size)
        run_options = None
        if self._decoder is None:  # let the decoder session take what the encoder's run freed
            run_options = self._ort.RunOptions()
            run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        (self.features,) = self.encoder.run(None, {"image": padded}, run_options)
        del padded
        _ = self.decoder  # the first encode makes the decoder session, now that its run is over
        self.original_size, self.input_size = tuple(image.shape[:2]), (h, w)
        self.is_image_set = True

    @property
    def decoder(self):
        """The decoder's session, made on first use: after the first encode, so that its weights
        and the encoder's peak activations are never resident together (~50 MB less peak)."""
        if self._decoder is None:
            release_free_memory()
            self._decoder = cpu_session(self._ort, self._decoder_path, self._threads)
        return self._decoder

    def predict(
        self,
        point_coords=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As `SamPredictor.predict`: masks (C, H, W) bool (or logits), IoU predictions (C,),
        low-res logits (C, 256, 256)."""
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        coords, labels, box, mask_input = model_input_prompts(
            self.transform, self.original_size, point_coords, point_labels, box, mask_input
        )
        coords, labels = decoder_prompt_inputs(coords, labels, box)
        has_mask = np.array([0.0 if mask_input is None else 1.0], np.float32)
        if mask_input is None:
            mask_input = np.zeros((1, 1, self.img_size // 4, self.img_size // 4), np.float32)
        low_res, iou = self.decoder.run(
            None,
            {
                "image_embeddings": self.features,
                "point_coords": coords,
                "point_labels": labels,
                "mask_input": mask_input,
                "has_mask_input": has_mask,
            },
        )
        keep = slice(1, None) if multimask_output else slice(0, 1)
        low_res, iou = low_res[:, keep], iou[:, keep]
        sizes = (self.img_size, self.input_size, self.original_size)
        if return_logits:
            masks = postprocess_logits(low_res, *sizes)
        else:
            masks = postprocess_above(low_res, *sizes, self.mask_threshold)
        return masks[0], iou[0], low_res[0]

    def reset_image(self) -> None:
        self.is_image_set = False
        self.features = None
        self.original_size = self.input_size = None
