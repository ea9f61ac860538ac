"""``fairseq-generate`` and ``fairseq-interactive`` search our LightConv models with the lean loop.

fairseq builds the generator in ``FairseqTask.build_generator``, which consults neither the
model nor a plugin. The wrapper passes ``seq_gen_cls=LeanSequenceGenerator`` when every model
is one of our LightConv models and the caller chose no generator class (``--print-alignment``
and ``--score-reference`` keep fairseq's); everything else is fairseq's code unchanged.
Scoped: stock fairseq models get fairseq's generator as before.
"""

from __future__ import annotations

from fairseq.tasks.fairseq_task import FairseqTask

_original_build_generator = None


def lean_generator_for(models: list, args: object = None) -> type | None:
    """``LeanSequenceGenerator`` if ``fairseq-generate`` searches ``models`` with it under generation
    options ``args`` (our LightConv models, while this fix is installed), else None (fairseq's choice)."""
    from ..models.lean_search import LeanSequenceGenerator, lean_search_applies

    plain = not getattr(args, "print_alignment", False) and not getattr(args, "score_reference", False)
    installed = _original_build_generator is not None
    return LeanSequenceGenerator if installed and plain and lean_search_applies(models) else None


def build_generator(
    self: FairseqTask,
    models: list,
    args: object,
    seq_gen_cls: type | None = None,
    extra_gen_cls_kwargs: dict | None = None,
    prefix_allowed_tokens_fn: object = None,
) -> object:
    """``FairseqTask.build_generator`` (fairseq's signature), with ``lean_generator_for``'s choice."""
    seq_gen_cls = seq_gen_cls or lean_generator_for(models, args)
    return _original_build_generator(self, models, args, seq_gen_cls, extra_gen_cls_kwargs, prefix_allowed_tokens_fn)


def install() -> None:
    """Idempotent."""
    global _original_build_generator
    if _original_build_generator is None:
        _original_build_generator = FairseqTask.build_generator
        FairseqTask.build_generator = build_generator
