"""Image and sentence embeddings in one CLIP-style space, through Beam's RunInference.

A CLIP or SigLIP model folder (save_pretrained: weights, tokenizer, image processor), loaded with
transformers' from_pretrained on each worker (a gs:// or s3:// folder is copied once per machine:
transforms/model_weights.py), on the GPU when the worker has one. RunInference batches the rows
(batch_size per forward pass) and shares the loaded model within a worker process. The vectors come
out as float32 numpy arrays; transforms/bitext_match.py normalises them.

A row's vector does not depend on the rows it was batched with: RunInference batches whatever a
bundle holds, and a matrix product of another shape may round differently in the last bits, which
would change similarities (and rarely a ranking) from one run to the next. So every forward pass has
one shape: the batch is padded to batch_size (with copies of its first row, dropped after) and text
to the model's full length. The price is the padding's compute: the last batch of a bundle, and for
CLIP text (SigLIP pads to full length anyway) the tokens past each sentence's end.
"""
from __future__ import annotations

import io
from typing import Any, Iterable, Literal, Mapping, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference

from transforms.model_weights import local_weights

Modality = Literal["image", "text"]


class ClipTower:
    """The loaded model and the preprocessor of one modality (an object: Beam keeps a weak reference
    to what load_model returns, which a tuple cannot take)."""

    def __init__(self, model: Any, preprocess: Any, device: str):
        self.model, self.preprocess, self.device = model, preprocess, device


class ClipEmbeddings(ModelHandler[Any, np.ndarray, ClipTower]):
    """Encoded image bytes ("image") or sentences ("text") -> one vector each."""

    def __init__(self, model: str, modality: Modality, batch_size: int):
        super().__init__()
        self.model_uri, self.modality, self.batch_size = model, modality, batch_size

    def load_model(self) -> ClipTower:
        import torch
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        folder = local_weights(self.model_uri)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = AutoModel.from_pretrained(folder).to(device).eval()
        preprocess = (AutoImageProcessor if self.modality == "image" else AutoTokenizer).from_pretrained(folder)
        return ClipTower(model, preprocess, device)

    def run_inference(self, batch: Sequence[Any], model: ClipTower,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[np.ndarray]:
        import torch

        rows = len(batch)
        batch = [*batch, *[batch[0]] * (self.batch_size - rows)]  # one shape for every pass (see above)
        with torch.inference_mode():
            if self.modality == "image":
                pixels = model.preprocess(images=[_rgb(b) for b in batch], return_tensors="pt")["pixel_values"]
                out = model.model.get_image_features(pixel_values=pixels.to(model.device))
            else:
                config = model.model.config
                # Full length: SigLIP was trained on it, and CLIP (which pools at the end token and
                # masks the padding) then computes every batch in one shape.
                tokens = model.preprocess(list(batch), padding="max_length", truncation=True, return_tensors="pt",
                                          max_length=config.text_config.max_position_embeddings)
                out = model.model.get_text_features(**{k: v.to(model.device) for k, v in tokens.items()
                                                      if k in ("input_ids", "attention_mask")})
        vectors = getattr(out, "pooler_output", out)  # transformers 5 returns an output object
        return list(vectors.float().cpu().numpy()[:rows])

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return {"max_batch_size": self.batch_size}


def _rgb(data: bytes):
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


class Embed(beam.PTransform):
    """(id, image bytes or sentence) -> (id, vector)."""

    def __init__(self, model: str, modality: Modality, batch_size: int):
        super().__init__()
        self.handler = KeyedModelHandler(ClipEmbeddings(model, modality, batch_size))

    def expand(self, rows):
        return rows | "RunInference" >> RunInference(self.handler)
