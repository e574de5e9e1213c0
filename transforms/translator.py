"""The translator as a Beam RunInference model handler (florenz-data eval-translator): each batch
goes through the worker's dispatcher (transforms/dispatcher.py), which holds the server, the
admission slots and the event loop; the request logic is transforms/translation_client.py.

The pipeline's translate step does not use RunInference: RunInference calls `run_inference` once per
batch and waits for all of it, so one bundle leaves the server idle while its batch's slowest
requests finish. transforms/translate_batches.py keeps several batches per bundle in flight instead.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Optional, Sequence

from apache_beam.ml.inference.base import ModelHandler

from schemas.config import TranslatorConfig
from schemas.records import TranslationOutcome, TranslationRequest
from transforms.dispatcher import Dispatcher, count_result, require_api_key_env, shares_across_processes
from transforms.translate import NAMESPACE


class VLLMTranslationHandler(ModelHandler[TranslationRequest, TranslationOutcome, Dispatcher]):
    def __init__(self, config: TranslatorConfig):
        super().__init__()
        require_api_key_env(config)
        self.config = config

    def load_model(self) -> Dispatcher:
        return Dispatcher(self.config)

    def share_model_across_processes(self) -> bool:
        return shares_across_processes(self.config)

    def batch_elements_kwargs(self) -> dict[str, Any]:
        # Fixed-size batches: BatchElements would otherwise start at 1 and grow, starving vLLM.
        return {"min_batch_size": self.config.batch_size, "max_batch_size": self.config.batch_size}

    def get_metrics_namespace(self) -> str:
        return NAMESPACE

    def run_inference(self, batch: Sequence[TranslationRequest], model: Dispatcher,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[TranslationOutcome]:
        result = model.translate(list(batch), os.getpid())
        count_result(result)
        return result.outcomes
