"""``--int8-dense``: quantize the dense remainder of a model when fairseq prepares it for inference."""

from __future__ import annotations

import logging

from ..modules.int8_dense import parse_int8_dense, quantize_dense_linears

logger = logging.getLogger(__name__)


class Int8DenseInference:
    """Model mixin: ``prepare_for_inference_`` (called by fairseq-generate/-interactive after
    loading the weights) also replaces the dense linear layers named by ``--int8-dense`` by
    int8 ones. Quantizing at build time instead would break loading the float checkpoint."""

    int8_dense: str = "none"

    def set_int8_dense(self, spec: str) -> None:
        parse_int8_dense(spec)  # a bad value fails when the model is built, not after loading it
        self.int8_dense = str(spec)

    def prepare_for_inference_(self, cfg: object) -> None:
        super().prepare_for_inference_(cfg)  # type: ignore[misc]
        self.int8_layers = quantize_dense_linears(self, self.int8_dense)  # type: ignore[arg-type]
        if self.int8_layers:
            logger.info("--int8-dense %s: %d dense linear layers run in int8", self.int8_dense, len(self.int8_layers))
