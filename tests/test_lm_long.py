"""The long-context LM: position options, LongGen layers, incremental decoding (bounded and paged
caches) against the full forward, session context across segments, and Star Attention scoring."""

import dataclasses

import pytest
import torch

from asr.attention import KVCache
from asr.attention.paged_cache import PagedCacheConfig
from asr.attention.sparse import LongGenConfig
from asr.attention.xpos import blockwise_causal_mask
from asr.models import LMConfig, LMScorer, TransformerLM
from asr.models.lm_session import SessionContextConfig, SessionLM
from asr.models.lm_star import full_logits, star_encode, star_logits
from asr.search.scorer import SOS_EOS, Memory

V = 23
LONGGEN = LongGenConfig(window=4, sinks=1, block_size=3, stride=2)
MEM = Memory(enc=torch.zeros(1, 4))


def _lm(pos="rope", n_layers=3, longgen=None, **kw):
    torch.manual_seed(0)
    cfg = LMConfig(d_model=32, n_heads=4, n_layers=n_layers, dropout=0.0, pos=pos, xpos_scale_base=16.0,
                   longgen=longgen, **kw)
    return TransformerLM(V, cfg).eval()


def _stream(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, V, (n,), generator=g)


def _layers_forward(lm, tokens, masks):
    """Reference forward with one explicit (T, T) mask per layer."""
    x = lm.embed(tokens[None])
    for layer, m in zip(lm.layers, masks):
        x = layer(x, m)
    return lm.out(lm.norm(x))[0]


def test_position_options_share_the_state_dict():
    keys = {pos: list(_lm(pos).state_dict()) for pos in ("rope", "xpos", "none")}
    assert keys["rope"] == keys["xpos"] == keys["none"]
    assert LMConfig().pos == "rope" and _lm().layers[0].self_attn.pos == "rotary"
    with pytest.raises(ValueError, match="LMConfig.pos"):
        TransformerLM(V, dataclasses.replace(LMConfig(), pos="alibi"))


@pytest.mark.parametrize("pos", ["rope", "xpos", "none"])
@pytest.mark.parametrize("longgen", [None, LONGGEN])
@pytest.mark.parametrize("paged", [False, True])
def test_incremental_decoding_equals_full_forward(pos, longgen, paged):
    lm = _lm(pos, longgen=longgen)
    tokens = _stream(17)
    with torch.no_grad():
        full = lm.out(lm.hidden(tokens[None]))[0]
        caches = (lm.empty_paged_caches(1, torch.device("cpu"), PagedCacheConfig(page_size=4)) if paged
                  else lm.empty_caches(1, torch.device("cpu")))
        outs = []
        for a, b in ((0, 1), (1, 6), (6, 7), (7, 17)):  # single tokens and chunks
            h, caches = lm.extend(tokens[None, a:b], caches)
            outs.append(lm.out(h)[0])
    assert (torch.cat(outs) - full).abs().max() < 1e-5


def test_longgen_layers_use_their_masks():
    lm = _lm(longgen=LONGGEN)
    masks = [lm.layer_mask(i, 12, torch.device("cpu")) for i in range(3)]
    assert torch.equal(masks[1], torch.ones(12, 12, dtype=torch.bool).tril())  # the full layer
    assert torch.equal(masks[0], LONGGEN.mask(0, 12)) and not bool(masks[0].equal(masks[1]))
    tokens = _stream(12)
    with torch.no_grad():
        assert (lm.out(lm.hidden(tokens[None]))[0] - _layers_forward(lm, tokens, masks)).abs().max() < 1e-6


def test_blockwise_causal_inference():
    lm = _lm("xpos")
    tokens = _stream(20)
    bca = blockwise_causal_mask(20, 4)
    with torch.no_grad():
        got = lm.out(lm.hidden(tokens[None], block_size=4))[0]
        assert (got - _layers_forward(lm, tokens, [bca] * 3)).abs().max() < 1e-6
        # within the first two blocks nothing differs from plain causal attention
        plain = lm.out(lm.hidden(tokens[None]))[0]
    assert (got[:8] - plain[:8]).abs().max() < 1e-6 and (got[8:] - plain[8:]).abs().max() > 1e-4


# ----------------------------------------------------------------------------- session context
SEGMENTS = [[5, 6, 7, 8, 9], [10, 11, 12], [4, 4, 13, 14, 15, 16, 17, 18, 19]]


def _session_logp(session, seg):
    """Log-probs the session scorer gives the tokens of ``seg`` after ``<s>`` (step by step, as a search)."""
    scorer = session.scorer()
    state = scorer.init_state(MEM)
    prefix, out = [SOS_EOS], []
    for tok in seg:
        logp, state = scorer.score(torch.tensor([prefix]), state, MEM)
        out.append(logp[0])
        state = scorer.select_state(state, torch.tensor([0]), torch.tensor([tok]))
        prefix.append(tok)
    return torch.stack(out)


@pytest.mark.parametrize("pos", ["rope", "xpos"])
def test_session_context_equals_scoring_the_concatenated_text(pos):
    lm = _lm(pos)
    session = SessionLM(lm, SessionContextConfig(max_tokens=None, page_size=4))
    first = _session_logp(session, SEGMENTS[0])
    # the first segment of a session is scored exactly as with the plain LM scorer
    plain = LMScorer(lm)
    st = plain.init_state(MEM)
    for i, tok in enumerate(SEGMENTS[0]):
        logp, st = plain.score(torch.tensor([[SOS_EOS] + SEGMENTS[0][:i]]), st, MEM)
        st = plain.select_state(st, torch.tensor([0]), torch.tensor([tok]))
        assert torch.allclose(logp[0], first[i], atol=1e-6)
    score0 = session.commit(SEGMENTS[0])
    assert torch.allclose(score0[:-1], first.gather(1, torch.tensor(SEGMENTS[0])[:, None])[:, 0], atol=1e-6)
    session.commit(SEGMENTS[1])
    carried = _session_logp(session, SEGMENTS[2])
    stream = [SOS_EOS, *SEGMENTS[0], SOS_EOS, *SEGMENTS[1], SOS_EOS, *SEGMENTS[2]]
    with torch.no_grad():
        full = lm.out(lm.hidden(torch.tensor([stream])))[0].log_softmax(-1)
    n = len(SEGMENTS[2])
    assert (carried - full[-n - 1 : -1]).abs().max() < 1e-5
    assert session.position == len(stream) - n - 1 and session.committed == 2
    # without the carried context the scores differ: the context matters
    assert (carried - _session_logp(SessionLM(lm), SEGMENTS[2])).abs().max() > 1e-3


def test_session_with_eviction_equals_masked_reference_and_stays_bounded():
    lm = _lm("xpos", n_layers=2)
    cfg = SessionContextConfig(max_tokens=16, page_size=4, sink_pages=1, recent_pages=1)
    session = SessionLM(lm, cfg)
    segments = [_stream(n, seed).tolist() for seed, n in enumerate([7, 3, 9, 5, 11, 6, 8])]
    probe = [4, 5, 6]
    stream, seen = [], [[] for _ in lm.layers]
    caches = lm.empty_paged_caches(1, torch.device("cpu"), cfg.paged())

    def feed(tokens):  # token-by-token reference feed: what each layer's cache held before each query
        nonlocal caches
        for tok in tokens:
            for i, c in enumerate(caches):
                seen[i].append(set(c.pos.tolist()) | {len(stream)})
            with torch.no_grad():
                _, caches = lm.step(torch.tensor([tok]), caches)
            stream.append(tok)

    for seg in segments:
        feed([SOS_EOS, *seg])
        session.commit(seg)
        assert session.nbytes <= 2 * 2 * 4 * 8 * 4 * cfg.paged().max_tokens  # layers*kv*heads*dh*bytes*tokens
    # the page-aligned chunked commit evicts exactly what a token-by-token feed evicts
    for a, b in zip(session.caches, caches):
        assert torch.equal(a.pos, b.pos) and a.evicted == b.evicted > 0
        assert torch.allclose(a.k, b.k, atol=1e-5)
    t = len(stream)
    carried = _session_logp(session, probe)  # the search feeds <s>, 4, 5 on top of the session
    feed([SOS_EOS, *probe[:-1]])
    n = len(stream)
    masks = [torch.tensor([[j in seen[i][q] for j in range(n)] for q in range(n)]) for i in range(len(lm.layers))]
    assert not bool(masks[0][-1, :t].all())  # the probe really lost evicted context
    with torch.no_grad():
        ref = _layers_forward(lm, torch.tensor(stream), masks).log_softmax(-1)
    assert (carried - ref[t:]).abs().max() < 1e-4


def test_session_scorer_in_offline_and_bsbs_decoding():
    from asr.decode.bsbs import BsbsDecoder, joint_scorers
    from asr.decode.offline import offline_decode
    from asr.encoder import EncoderConfig
    from asr.models import DecoderConfig, ModelConfig, build_model

    torch.manual_seed(0)
    enc = dataclasses.replace(EncoderConfig.tiny(), dropout=0.0)
    model = build_model(ModelConfig(vocab_size=V, kind="joint", encoder=enc,
                                    decoder=DecoderConfig(d_model=32, n_layers=1, dropout=0.0))).eval()
    lm = _lm(n_layers=1)
    feats = torch.randn(120, 80)
    session = SessionLM(lm, SessionContextConfig(max_tokens=64, page_size=4))
    first = offline_decode(model, feats, beam=3, lm=session.scorer(), lm_weight=2.0)
    assert first.ids == offline_decode(model, feats, beam=3, lm=lm, lm_weight=2.0).ids
    session.commit(first.ids)
    session.commit([5, 6, 7, 5, 6, 7])
    offline_decode(model, feats, beam=3, lm=session.scorer(), lm_weight=2.0)  # runs on the carried context
    scorers, _ = joint_scorers(model, 0.3, session.scorer(), 1.0)
    assert scorers["lm"].session is session
    BsbsDecoder(model, beam=3, lm=session.scorer(), lm_weight=1.0)


# ----------------------------------------------------------------------------- Star Attention
@pytest.mark.parametrize("pos", ["rope", "xpos"])
def test_full_logits_equals_hidden(pos):
    lm = _lm(pos)
    tokens = _stream(40)
    with torch.no_grad():
        ref = lm.out(lm.hidden(tokens[None]))[0]
    assert (full_logits(lm, tokens, query_chunk=7) - ref).abs().max() < 1e-5


@pytest.mark.parametrize("pos", ["rope", "xpos"])
def test_star_with_one_block_is_exact(pos):
    lm = _lm(pos)
    ctx, query = _stream(21), _stream(6, seed=1)
    ref = full_logits(lm, torch.cat([ctx, query]))[21:]
    got = star_logits(lm, star_encode(lm, ctx, block_size=32), query, 21)
    assert (got - ref).abs().max() < 1e-5


def test_star_phase_two_over_exact_blocks_is_exact():
    """Given the exact context KV (split in blocks), phase 2's merged attention is exact."""
    lm = _lm("xpos")
    ctx, query = _stream(20), _stream(5, seed=1)
    caches = [KVCache.empty(1, 4, 8, None) for _ in lm.layers]
    with torch.no_grad():
        _, caches = lm.extend(ctx[None], caches)
    blocks = [[(c.k[..., a : a + 6, :], c.v[..., a : a + 6, :]) for a in range(0, 20, 6)] for c in caches]
    ref = full_logits(lm, torch.cat([ctx, query]))[20:]
    assert (star_logits(lm, blocks, query, 20, refs=[0] * len(blocks[0])) - ref).abs().max() < 1e-5


def test_xpos_long_inputs_do_not_overflow():
    """Past ~70 * scale_base positions xpos keys counted from 0 overflow float32; the chunked full
    attention, Star Attention and the paged session cache count from a moving reference."""
    lm = _lm("xpos", n_layers=2)  # scale_base 16: overflow from ~1100 positions when counted from 0
    tokens = _stream(3000)
    tokens[0] = SOS_EOS
    with torch.no_grad():
        naive = lm.out(lm.hidden(tokens[None]))[0]
    assert not bool(torch.isfinite(naive).all())
    full = full_logits(lm, tokens, query_chunk=512)
    assert bool(torch.isfinite(full).all())
    star = star_logits(lm, star_encode(lm, tokens[:2900], block_size=512), tokens[2900:], 2900)
    assert bool(torch.isfinite(star).all())  # blocks well below 70 * scale_base, refs per block
    session = SessionLM(lm, SessionContextConfig(max_tokens=None, page_size=64))
    logp = session.commit(tokens[1:].tolist())  # stream "<s> tokens[1:]": the same tokens as ``full`` sees
    ref = full.log_softmax(-1).gather(1, torch.cat([tokens[1:], torch.tensor([SOS_EOS])])[:, None])[:, 0]
    assert session.caches[0].ref > 0 and (logp - ref).abs().max() < 1e-3


@pytest.mark.parametrize("pos", ["rope", "xpos"])
def test_star_phase_one_blocks_see_anchor_and_themselves(pos):
    lm = _lm(pos)
    ctx = _stream(14)
    caches = star_encode(lm, ctx, block_size=4)
    assert [b[0].shape[-2] for b in caches[0]] == [4, 4, 4, 2]
    # block 2 encoded alone with the anchor in front, at its true positions, equals the star cache
    mask = torch.zeros(14, 14, dtype=torch.bool)
    for q in range(14):
        blk = q // 4
        for j in range(q + 1):
            mask[q, j] = j // 4 == blk or j < 4
    kv = [KVCache.empty(1, 4, 8, None) for _ in lm.layers]
    x = lm.embed(ctx[None])
    with torch.no_grad():
        for i, layer in enumerate(lm.layers):
            _, k, _ = layer.self_attn.project_self(layer.norm_self(x), 0)
            got = caches[i][2][0]
            if pos == "xpos":  # block 2 counts its decay from position 8
                got = layer.self_attn.xpos.rebase_keys(got, 8, 0)
            assert torch.allclose(got, k[..., 8:12, :], atol=1e-5)
            x = layer(x, mask)
