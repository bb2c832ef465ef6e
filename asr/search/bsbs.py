"""Blockwise synchronous beam search (Tsunoo, Kashiwagi, Watanabe, SLT 2021).

The encoder delivers its output block by block. For each new block the beam is extended with the
usual joint scores (attention decoder over all frames received so far, CTC prefix score over the
frames received so far, optional LM, length bonus) until the search becomes *unreliable* for the
frames at hand: some hypothesis in the new beam emits ``<eos>`` (the decoder ran out of acoustic
evidence), or repeats a token it already holds (the attention decoder re-attends to frames it
already used; the repetition test is ``BsbsConfig.repetition_test``). That step is discarded and,
with ``BsbsConfig.backoff``, so is the step before it (conservative backoff: the search resumes
from the beam two steps before the unreliable one, since the last committed outputs were made with
little look-ahead). After the last block, :meth:`BlockwiseBeamSearch.finalize` runs the ordinary
joint beam search to ``<eos>`` over the whole utterance.

With ``BsbsConfig.ctc_trigger`` the beam also stops, without backoff, once its hypotheses are as
long as the number of tokens that greedy CTC has seen in the frames received (the trigger of
triggered attention, Moritz et al. 2019), and the repetition test applies only to steps that reach
within one token of that count. The paper's rule alone stalls on long segments: a token that
legitimately recurs (``THE``, ``S``) fails the test in every later block, the backoff undoes the
step the block made, and the search is left with the whole segment to do after its end (final
latency of seconds). Behind the acoustic frontier a repeat is not a look-ahead error; at the
frontier the trigger and the test still keep the decoder from running ahead (librispeech-mini dev:
the same WER within noise, final latency p90 2.0 -> 0.6 s; ``benchmarks/results/bsbs_devtest``).

At the end of a stream the recognizer calls :meth:`BlockwiseBeamSearch.end_of_stream` before its
flush (digital silence to a block boundary): the flush's blocks are then only taken in, and
:meth:`~BlockwiseBeamSearch.finalize` searches them once, over all the frames. Searching each of
them as a block was thrown away work on the path to the final result: every new block makes the
decoder run each prefix again against the grown memory, the frontier rules back off the steps they
took, and the final search repeats them. Not exact (the final search starts from an earlier beam),
but on librispeech-mini dev 247 of 251 hypotheses are the same (WER 29.76 -> 29.80) and the final
latency p50 / p90 falls 310 / 726 -> 228 / 515 ms (``benchmarks/results/bsbs_latency_s16.md``).

Usage::

    bsbs = BlockwiseBeamSearch({"decoder": dec, "ctc": CTCPrefixScorer()},
                               {"decoder": 0.7, "ctc": 0.3}, BsbsConfig(beam_size=10))
    for enc_block, ctc_block in blocks:          # (t, D), (t, V)
        partial = bsbs.extend_block(enc_block, ctc_block)   # Hypothesis, for display
    nbest = bsbs.finalize()                      # list[Hypothesis], best first
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from asr.search.beam_search import BeamSearch, BeamSearchConfig
from asr.search.scorer import BLANK, Beam, Hypothesis, Memory, PartialScorer, Scorer

__all__ = ["BsbsConfig", "BlockwiseBeamSearch"]


@dataclass(frozen=True)
class BsbsConfig(BeamSearchConfig):
    """:class:`BeamSearchConfig` plus the block-exit rules.

    Args:
        repetition_test: leave the block when a hypothesis repeats a token it already holds
            (besides on ``<eos>``).
        ctc_trigger: a block's beam grows no longer than the greedy CTC token count of the frames
            received so far (the rest waits for more frames, or for :meth:`finalize`), and the
            repetition test applies only within one token of that count.
        backoff: on leaving a block, also drop the last step committed in it.
        trigger_slack: with ``ctc_trigger``, the beam may grow to the greedy CTC token count plus
            this many tokens (the repetition test then applies within one token of that bound).
            0 by default: 1-3 cut the final latency (the beam is closer to the end of the audio
            when it ends) but cost WER (``benchmarks/results/bsbs_latency_s16.md``).
    """

    repetition_test: bool = True
    ctc_trigger: bool = False
    backoff: bool = True
    trigger_slack: int = 0


class BlockwiseBeamSearch:
    """Stateful blockwise synchronous beam search for one utterance.

    Args:
        scorers: name -> full or partial scorer (as for :class:`BeamSearch`).
        weights: name -> weight, plus optional ``"length_bonus"``.
        config: search and block-exit settings.
    """

    def __init__(self, scorers: dict[str, Scorer | PartialScorer], weights: dict[str, float],
                 config: BsbsConfig = BsbsConfig()) -> None:
        self.search = BeamSearch(scorers, weights, config)
        self.config = config
        self.memory: Memory | None = None
        self.beam: Beam | None = None
        self.steps_backed_off = 0  # total steps dropped by the backoff (diagnostics)
        self.ctc_tokens = 0  # greedy CTC token count of the frames received (ctc_trigger)
        self._last_label = BLANK
        self.ending = False  # end_of_stream() was called: the blocks that follow are the last ones

    def _append(self, enc: Tensor | None, ctc_logp: Tensor | None, labels: list[int] | None = None) -> None:
        """Take new frames in; ``labels``: the per-frame argmax of ``ctc_logp`` when the caller has
        them on the host already (the batched search, :mod:`asr.search.batched`)."""
        if enc is None and ctc_logp is None:
            return
        if ctc_logp is not None and ctc_logp.shape[0]:
            labels = ctc_logp.argmax(-1).tolist() if labels is None else labels
            for prev, label in zip([self._last_label] + labels, labels):
                self.ctc_tokens += label != BLANK and label != prev
            self._last_label = labels[-1]
        if self.memory is None:
            self.memory = Memory(enc=enc, ctc_logp=ctc_logp)
        else:
            self.memory = self.memory.append(enc=enc, ctc_logp=ctc_logp)

    def extend_block(self, enc: Tensor | None = None,
                     ctc_logp: Tensor | None = None) -> Hypothesis:
        """Receive one block of encoder output and advance the beam as far as it is reliable.

        Args:
            enc: (t, D) new encoder frames (None if no scorer reads ``memory.enc``).
            ctc_logp: (t, V) their CTC log-probabilities (None if there is no CTC scorer).
        After :meth:`end_of_stream` the block is only taken in (for :meth:`finalize`).

        Returns:
            the current best partial hypothesis.
        """
        self._append(enc, ctc_logp)
        if self.ending or self.memory is None or self.memory.num_frames == 0:
            return self.best()
        if self.beam is None:
            self.beam = self.search.init_beam(self.memory)
        max_len = self.search.max_len(self.memory)
        if self.config.ctc_trigger and self.memory.ctc_logp is not None:
            max_len = min(max_len, self._frontier())
        before_last = None  # the beam before the last step committed in this block
        while self.beam.tokens.shape[1] - 1 < max_len:
            step = self.search.expand(self.beam, self.memory)
            if self._unreliable(step.running, step.ended) or len(step.running) == 0:
                if self.config.backoff and before_last is not None:
                    self.beam = before_last
                    self.steps_backed_off += 1
                break
            before_last, self.beam = self.beam, step.running
        return self.best()

    def _unreliable(self, running: Beam, ended: list[Hypothesis]) -> bool:
        if ended:
            return True
        if not self.config.repetition_test or running.tokens.shape[1] < 3:
            return False
        if self.config.ctc_trigger and running.tokens.shape[1] - 1 < self._frontier() - 1:
            return False  # behind the acoustic frontier: a repeat is a repeat in the audio
        history, last = running.tokens[:, 1:-1], running.tokens[:, -1:]
        return bool((history == last).any())

    def _frontier(self) -> int:
        """The most tokens the beam may hold with ``ctc_trigger``."""
        return self.ctc_tokens + self.config.trigger_slack

    def end_of_stream(self) -> None:
        """Declare that the blocks still to come are the stream's last (the recognizer's flush):
        :meth:`extend_block` then only takes their frames in and :meth:`finalize` searches them,
        once, over all the frames. A block search over them would be thrown away: the final
        search starts again on the grown memory (the decoder re-runs every prefix against it), and
        the frontier rules back off steps that the final search takes anyway."""
        self.ending = True

    def best(self) -> Hypothesis:
        """The best hypothesis of the current beam (empty before any block)."""
        if self.beam is None or len(self.beam) == 0:
            return Hypothesis(tokens=[], score=0.0)
        return self.beam.hypothesis(0)

    def finalize(self, enc: Tensor | None = None,
                 ctc_logp: Tensor | None = None) -> list[Hypothesis]:
        """Receive the last (possibly partial) block, if any, and search to ``<eos>``.

        Returns:
            n-best list, best first.
        """
        self._append(enc, ctc_logp)
        if self.memory is None or self.memory.num_frames == 0:
            return []
        if self.beam is None:
            self.beam = self.search.init_beam(self.memory)
        return self.search.search(self.beam, self.memory)
