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

    def train(self, mode: bool = True) -> Int8DenseInference:
        # fairseq-train builds the model like any other command; its first training step is
        # where an inference-only option can be told apart.
        if mode and self.int8_dense != "none":
            raise ValueError(
                f"--int8-dense {self.int8_dense} is inference-only (int8 layers cannot be trained): leave it out of "
                "fairseq-train and set it when decoding, e.g. fairseq-generate ... "
                "--model-overrides \"{'int8_dense': 'output_projection'}\""
            )
        return super().train(mode)  # type: ignore[misc]

    def prepare_for_inference_(self, cfg: object) -> None:
        super().prepare_for_inference_(cfg)  # type: ignore[misc]
        self.int8_layers = quantize_dense_linears(self, self.int8_dense)  # type: ignore[arg-type]
        if self.int8_layers:
            logger.info("--int8-dense %s: %d dense linear layers run in int8", self.int8_dense, len(self.int8_layers))
