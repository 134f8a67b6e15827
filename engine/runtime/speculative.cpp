#include "engine/runtime/speculative.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include <fmt/format.h>

#include "common/log.h"

namespace trove::engine {

const char* spec_method_name(SpecMethod m) {
  switch (m) {
    case SpecMethod::kOff: return "off";
    case SpecMethod::kLookup: return "lookup";
    case SpecMethod::kDraft: return "draft";
    case SpecMethod::kAuto: return "auto";
  }
  return "?";
}

std::optional<SpecMethod> parse_spec_method(std::string_view s) {
  if (s == "off" || s == "0" || s == "false") return SpecMethod::kOff;
  if (s == "lookup") return SpecMethod::kLookup;
  if (s == "draft") return SpecMethod::kDraft;
  if (s == "auto" || s == "on") return SpecMethod::kAuto;
  return std::nullopt;
}

SpecMethod default_spec_method(const Engine& target) {
  const std::string d = target.device_name();
  const bool cpu = d.find("llvmpipe") != std::string::npos || d.find("lavapipe") != std::string::npos ||
                   d.find("SwiftShader") != std::string::npos;
  return cpu ? SpecMethod::kOff : SpecMethod::kAuto;
}

// One pass over the history: every earlier position whose token equals the last one is a candidate;
// its match length is counted backwards (up to max_ngram). The longest wins, the most recent among
// equals (recent text is what an agent is most likely to be copying). O(history * max_ngram) at worst,
// O(history) in practice: a few hundred microseconds for 32k tokens.
LookupDraft lookup_draft(std::span<const int32_t> h, uint32_t k, uint32_t min_ngram, uint32_t max_ngram) {
  LookupDraft best;
  const size_t n = h.size();
  if (k == 0 || n < size_t{min_ngram} + 1 || min_ngram == 0) return best;
  size_t best_end = 0;  // the match's last position + 1: the draft starts there
  for (size_t end = n - 1; end-- > 0;) {  // end: index of the candidate's last token (< n - 1)
    if (h[end] != h[n - 1]) continue;
    uint32_t len = 1;
    while (len < max_ngram && len <= end && h[end - len] == h[n - 1 - len]) ++len;
    if (len >= min_ngram && len > best.ngram) {
      best.ngram = len;
      best_end = end + 1;
      if (len == max_ngram) break;
    }
  }
  if (best.ngram == 0) return best;
  // The continuation may run into the suffix itself (a repeating pattern): that is fine, those tokens
  // are in the history too.
  const size_t take = std::min<size_t>(k, n - best_end);
  best.tokens.assign(h.begin() + static_cast<ptrdiff_t>(best_end), h.begin() + static_cast<ptrdiff_t>(best_end + take));
  if (best.tokens.empty()) best.ngram = 0;
  return best;
}

double SparseDist::prob(int32_t token) const {
  for (const auto& [t, q] : p) {
    if (t == token) return q;
  }
  return 0;
}

int32_t SparseDist::draw(double u) const {
  double cum = 0;
  for (const auto& [t, q] : p) {
    cum += q;
    if (u < cum) return t;
  }
  return p.empty() ? -1 : p.back().first;  // rounding: the sum fell a hair short of u
}

SparseDist sampling_dist(std::span<const float> l, const Sampling& s) {
  const size_t n = l.size();
  // The engine clamps top_k the same way before ops::Sampler (0: 64).
  const size_t k = std::min<size_t>(std::clamp<uint32_t>(s.top_k == 0 ? 64 : s.top_k, 1, 64), n);
  // Top k in one pass: a heap whose front is the worst kept entry (higher logit first, lower id on ties).
  using E = std::pair<float, int32_t>;
  auto better = [](const E& a, const E& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  std::vector<E> heap;
  heap.reserve(k + 1);
  for (size_t i = 0; i < n; ++i) {
    const E e{l[i], static_cast<int32_t>(i)};
    if (heap.size() < k) {
      heap.push_back(e);
      std::push_heap(heap.begin(), heap.end(), better);
    } else if (better(e, heap.front())) {
      std::pop_heap(heap.begin(), heap.end(), better);
      heap.back() = e;
      std::push_heap(heap.begin(), heap.end(), better);
    }
  }
  std::sort(heap.begin(), heap.end(), better);
  const double t = s.temperature > 0 ? s.temperature : 1.0;
  std::vector<double> w(heap.size());
  double sum = 0;
  for (size_t j = 0; j < heap.size(); ++j) sum += w[j] = std::exp((double(heap[j].first) - heap[0].first) / t);
  size_t keep = 0;
  double cum = 0;
  for (size_t j = 0; j < heap.size(); ++j) {
    const double pj = w[j] / sum;
    if (j > 0 && pj < s.min_p * (w[0] / sum)) break;
    keep = j + 1;
    cum += pj;
    if (cum >= s.top_p) break;
  }
  double tot = 0;
  for (size_t j = 0; j < keep; ++j) tot += w[j];
  SparseDist d;
  d.p.reserve(keep);
  for (size_t j = 0; j < keep; ++j) d.p.emplace_back(heap[j].second, w[j] / tot);
  return d;
}

Verdict verify_greedy(std::span<const int32_t> drafts, std::span<const int32_t> argmax) {
  for (uint32_t i = 0; i < drafts.size(); ++i) {
    if (drafts[i] != argmax[i]) return {i, argmax[i]};
  }
  return {static_cast<uint32_t>(drafts.size()), argmax[drafts.size()]};
}

Verdict verify_sampled(std::span<const int32_t> drafts, std::span<const SparseDist> p, std::span<const SparseDist> q,
                       std::mt19937_64& rng) {
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  for (uint32_t i = 0; i < drafts.size(); ++i) {
    const int32_t d = drafts[i];
    const double pd = p[i].prob(d), qd = q.empty() ? 1.0 : q[i].prob(d);
    if (qd > 0 && uni(rng) < std::min(1.0, pd / qd)) continue;
    // Rejected: draw from the residual norm(max(0, p - q)). It is empty only when p == q, where the
    // draft is always accepted; guard anyway by drawing from p.
    SparseDist r;
    double tot = 0;
    for (const auto& [t, pt] : p[i].p) {
      const double qt = q.empty() ? (t == d ? 1.0 : 0.0) : q[i].prob(t);
      if (pt > qt) {
        r.p.emplace_back(t, pt - qt);
        tot += pt - qt;
      }
    }
    if (tot <= 0) return {i, p[i].draw(uni(rng))};
    for (auto& e : r.p) e.second /= tot;
    return {i, r.draw(uni(rng))};
  }
  return {static_cast<uint32_t>(drafts.size()), p[drafts.size()].draw(uni(rng))};
}

void AdaptiveK::update(uint32_t drafted, uint32_t accepted) {
  if (drafted == 0) return;
  k = accepted == drafted ? std::min(k + 2, kMaxDraftTokens) : std::max<uint32_t>(k - 1, 1);
}

Status Speculator::check_draft_model(const Engine& target, const Engine& draft) {
  const ModelConfig &t = target.config(), &d = draft.config();
  if (t.n_vocab != d.n_vocab || target.tokenizer().n_vocab() != draft.tokenizer().n_vocab()) {
    return Status::InvalidArgument(fmt::format(
        "the draft model {} has a vocabulary of {} tokens but the target {} has {}: a draft model must use the "
        "target's tokenizer (for Qwen3: a smaller Qwen3, e.g. Qwen3-0.6B)",
        d.name, d.n_vocab, t.name, t.n_vocab));
  }
  const auto nt = static_cast<int32_t>(target.tokenizer().n_vocab());
  for (int32_t id : {0, nt / 3, nt / 2, nt - 1}) {
    if (id < 0 || id >= nt) continue;
    if (target.tokenizer().piece(id) != draft.tokenizer().piece(id)) {
      return Status::InvalidArgument(fmt::format("the draft model {} spells token {} differently from the target {}: "
                                                 "a draft model must use the target's tokenizer",
                                                 d.name, id, t.name));
    }
  }
  if (draft.n_ctx() < target.n_ctx()) {
    return Status::InvalidArgument(fmt::format("the draft model's context ({} tokens) is shorter than the target's "
                                               "({}); load it with the same context",
                                               draft.n_ctx(), target.n_ctx()));
  }
  return Status::Ok();
}

void Speculator::start(SpecSequence& s, SpecMethod method, const Sampling& sampling, std::string draft_namespace) {
  s.method = method;
  s.sampling = sampling;
  s.draft_namespace = std::move(draft_namespace);
  // Reproducible for a given seed; sequences with the same seed and prompt draw the same.
  s.rng.seed(sampling.seed * 0x9E3779B97F4A7C15ull + s.history.size());
}

void Speculator::stop(SpecSequence& s) {
  if (s.draft_seq && draft_) draft_->close_sequence(*s.draft_seq);
  s.draft_seq.reset();
}

uint32_t best_draft_k(double acceptance, double draft_step_s, std::span<const double> target_step_s, uint32_t k_max) {
  std::vector<size_t> measured;
  for (size_t n = 1; n < target_step_s.size(); ++n) {
    if (target_step_s[n] > 0) measured.push_back(n);
  }
  if (measured.empty()) return 0;
  // The measured widths' mean growth per token (0 with one measured width).
  const size_t lo = measured.front(), hi = measured.back();
  const double growth = hi > lo ? std::max(0.0, (target_step_s[hi] - target_step_s[lo]) / double(hi - lo)) : 0.0;
  auto step_s = [&](size_t n) {
    if (n < target_step_s.size() && target_step_s[n] > 0) return target_step_s[n];
    if (n > lo) {  // from the nearest measured narrower width
      size_t m = std::min(n, target_step_s.size() - 1);
      while (!(target_step_s[m] > 0)) --m;
      return target_step_s[m] + growth * double(n - m);
    }
    // Narrower than any measured width: back from the narrowest, never below its per-token share.
    return std::max(target_step_s[lo] - growth * double(lo - n), target_step_s[lo] / double(lo));
  };
  const double a = std::clamp(acceptance, 0.0, 1.0);
  uint32_t best = 0;
  double best_rate = 1.0 / step_s(1), tokens = 1.0, ak = 1.0;
  for (uint32_t k = 1; k <= k_max; ++k) {
    ak *= a;
    tokens += ak;
    const double rate = tokens / (step_s(1 + k) + double(k) * draft_step_s);
    if (rate > best_rate) best = k, best_rate = rate;
  }
  return best;
}

void Speculator::observe_target_step(uint32_t tokens, double seconds) {
  if (tokens == 0 || tokens >= costs_.target_step_s.size() || !(seconds > 0)) return;
  double& t = costs_.target_step_s[tokens];
  t = t > 0 ? 0.9 * t + 0.1 * seconds : seconds;
}

int32_t Speculator::auto_draft_length(uint32_t k_max) const {
  const bool stepped = std::any_of(costs_.target_step_s.begin(), costs_.target_step_s.end(), [](double t) { return t > 0; });
  if (!draft_ || costs_.drafted < kAutoLearnDrafts || !(costs_.draft_step_s > 0) || !stepped) return -1;
  const double a = double(costs_.accepted) / double(costs_.drafted);
  return static_cast<int32_t>(best_draft_k(a, costs_.draft_step_s, costs_.target_step_s, k_max));
}

uint32_t Speculator::auto_draft_k(uint32_t k) {
  const int32_t length = auto_draft_length(k);
  if (length < 0) return k;
  const uint32_t best = static_cast<uint32_t>(length);
  const double a = double(costs_.accepted) / double(costs_.drafted);
  if (best == 0 && !told_unprofitable_) {
    told_unprofitable_ = true;
    log::info("speculative",
              "auto: the draft model's rounds do not pay here (a draft step {:.2f} ms, target steps up to {:.2f} ms, {:.0f}% "
              "of its drafts accepted): drafting by prompt lookup only while that holds",
              costs_.draft_step_s * 1e3, *std::max_element(costs_.target_step_s.begin(), costs_.target_step_s.end()) * 1e3, 100.0 * a);
  } else if (best > 0) {
    told_unprofitable_ = false;
  }
  return best;
}

void Speculator::propose(std::span<SpecSequence* const> seqs, uint32_t budget) {
  std::vector<uint32_t> want(seqs.size(), 0), alloc(seqs.size(), 0);
  std::vector<LookupDraft> found(seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) {
    SpecSequence& s = *seqs[i];
    s.used = SpecMethod::kOff;
    s.fed.assign(1, s.history.back());
    s.q.clear();
    const uint32_t cap = target_.verifies_drafts() ? std::min(s.cap, kMaxDraftTokens) : 0;
    if (s.method == SpecMethod::kOff || cap == 0) continue;
    if (s.method == SpecMethod::kLookup || s.method == SpecMethod::kAuto) {
      found[i] = lookup_draft(s.history, std::min(s.k_lookup.k, cap));
    }
    const bool lookup = !found[i].tokens.empty() &&
                        (s.method == SpecMethod::kLookup || found[i].ngram >= 3 || !draft_);
    if (lookup) {
      s.used = SpecMethod::kLookup;
      want[i] = static_cast<uint32_t>(found[i].tokens.size());
    } else if (draft_ && (s.method == SpecMethod::kDraft || s.method == SpecMethod::kAuto)) {
      const uint32_t k = std::min(s.k_draft.k, cap);
      want[i] = s.method == SpecMethod::kAuto ? auto_draft_k(k) : k;
      if (want[i] > 0) s.used = SpecMethod::kDraft;
    }
  }
  for (bool more = true; more && budget > 0;) {
    more = false;
    for (size_t i = 0; i < seqs.size() && budget > 0; ++i) {
      if (alloc[i] < want[i]) {
        ++alloc[i];
        --budget;
        more = true;
      }
    }
  }
  bool any_draft = false;
  for (size_t i = 0; i < seqs.size(); ++i) {
    SpecSequence& s = *seqs[i];
    if (alloc[i] == 0) s.used = SpecMethod::kOff;
    if (s.used == SpecMethod::kLookup) s.fed.insert(s.fed.end(), found[i].tokens.begin(), found[i].tokens.begin() + alloc[i]);
    any_draft |= s.used == SpecMethod::kDraft;
  }
  if (any_draft) run_draft(seqs, alloc);
}

// The draft model's rounds: round 0 feeds each sequence what its draft sequence lacks (the target's
// accepted tokens since the last round, then the next token) and drafts d1; round j feeds d_j and
// drafts d_{j+1}. A sequence whose catch-up does not fit the draft's batch drafts nothing this round
// (its catch-up goes on in chunks, one per round).
void Speculator::run_draft(std::span<SpecSequence* const> seqs, std::span<const uint32_t> want_in) {
  std::vector<uint32_t> want(want_in.begin(), want_in.end());
  std::vector<size_t> who;
  for (size_t i = 0; i < seqs.size(); ++i) {
    SpecSequence& s = *seqs[i];
    if (s.used != SpecMethod::kDraft) continue;
    s.used = SpecMethod::kOff;  // until it has drafts
    if (!s.draft_seq) {
      auto opened = draft_->open_sequence();
      if (!opened.ok()) continue;  // every draft slot busy: no drafts for it now
      s.draft_seq = *opened;
      if (!s.draft_namespace.empty()) {
        const std::span<const int32_t> h(s.history);
        if (auto got = draft_->attach_prefix(*s.draft_seq, h.first(h.size() - 1), s.draft_namespace); !got.ok()) {
          log::warn("speculative", "draft model prefix cache not used: {}", got.status().message());
        }
      }
    }
    const uint32_t held = draft_->length(*s.draft_seq);
    if (held >= s.history.size()) (void)draft_->truncate(*s.draft_seq, static_cast<uint32_t>(s.history.size() - 1));
    who.push_back(i);
  }
  auto drop = [&](SpecSequence& s) {  // the draft sequence is in an unknown state: start it afresh later
    stop(s);
    s.fed.resize(1);
    s.q.clear();
    s.used = SpecMethod::kOff;
  };
  auto take = [&](SpecSequence& s, const StepOutput& o) {
    if (s.sampling.temperature > 0) {
      s.q.push_back(sampling_dist(o.logits, s.sampling));
      std::uniform_real_distribution<double> uni(0.0, 1.0);
      s.fed.push_back(s.q.back().draw(uni(s.rng)));
    } else {
      s.fed.push_back(o.token);
    }
  };
  // Round 0.
  std::vector<StepInput> in;
  std::vector<size_t> owner;
  std::vector<bool> drafting(seqs.size(), false);
  uint32_t room = draft_->max_batch_tokens();
  for (size_t i : who) {
    SpecSequence& s = *seqs[i];
    const uint32_t held = draft_->length(*s.draft_seq);
    const uint32_t need = static_cast<uint32_t>(s.history.size()) - held;
    if (room == 0) break;
    StepInput x;
    x.seq = *s.draft_seq;
    const bool whole = need <= room;
    x.tokens = std::span<const int32_t>(s.history).subspan(held, whole ? need : room);
    x.sample = whole && !(s.sampling.temperature > 0);
    x.want_logits = whole && s.sampling.temperature > 0;
    x.sampling = s.sampling;
    room -= static_cast<uint32_t>(x.tokens.size());
    in.push_back(x);
    owner.push_back(i);
    drafting[i] = whole;
  }
  if (in.empty()) return;
  auto timed_step = [&](std::span<const StepInput> x) {
    const auto t0 = std::chrono::steady_clock::now();
    auto r = draft_->step(x);
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r.ok()) costs_.draft_step_s = costs_.draft_step_s > 0 ? 0.9 * costs_.draft_step_s + 0.1 * sec : sec;
    return r;
  };
  auto out = timed_step(in);
  if (!out.ok()) {
    log::warn("speculative", "draft model step failed, drafting nothing this round: {}", out.status().message());
    for (size_t i : owner) drop(*seqs[i]);
    return;
  }
  for (size_t j = 0; j < owner.size(); ++j) {
    if (drafting[owner[j]]) take(*seqs[owner[j]], (*out)[j]);
  }
  // Rounds 1..: one token each for the sequences that want more.
  for (uint32_t round = 1;; ++round) {
    in.clear();
    owner.clear();
    for (size_t i : who) {
      SpecSequence& s = *seqs[i];
      if (!drafting[i] || want[i] <= round) continue;
      StepInput x;
      x.seq = *s.draft_seq;
      x.tokens = std::span<const int32_t>(s.fed).subspan(round, 1);
      x.provisional = 1;
      x.sample = !(s.sampling.temperature > 0);
      x.want_logits = s.sampling.temperature > 0;
      x.sampling = s.sampling;
      in.push_back(x);
      owner.push_back(i);
    }
    if (in.empty()) break;
    auto more = timed_step(in);
    if (!more.ok()) {
      // Keep the drafts made so far; the draft sequences are rolled back by accept().
      log::warn("speculative", "draft model step failed: {}", more.status().message());
      break;
    }
    for (size_t j = 0; j < owner.size(); ++j) take(*seqs[owner[j]], (*more)[j]);
  }
  for (size_t i : who) {
    if (drafting[i] && seqs[i]->fed.size() > 1) seqs[i]->used = SpecMethod::kDraft;
  }
}

void Speculator::fill(const SpecSequence& s, SeqId target_seq, StepInput& in) const {
  in.seq = target_seq;
  in.tokens = s.fed;
  in.sampling = s.sampling;
  in.provisional = s.drafts();
  in.sample = true;
  if (s.drafts() == 0) return;
  if (s.sampling.temperature > 0) {
    in.sample = false;
    in.want_logits = in.all_logits = true;
  } else {
    in.all_tokens = true;
  }
}

Result<std::vector<int32_t>> Speculator::accept(SpecSequence& s, SeqId seq, const StepOutput& out, SpecStats& stats) {
  const uint32_t k = s.drafts();
  const std::span<const int32_t> drafts = std::span<const int32_t>(s.fed).subspan(1);
  Verdict v;
  if (k == 0) {
    v.next = out.token;
  } else if (s.sampling.temperature > 0) {
    const size_t nv = target_.config().n_vocab;
    if (out.logits.size() != (k + 1) * nv) {
      return Status::Internal(fmt::format("speculative: {} logits for {} verified positions", out.logits.size(), k + 1));
    }
    std::vector<SparseDist> p;
    for (uint32_t i = 0; i <= k; ++i) p.push_back(sampling_dist(std::span<const float>(out.logits).subspan(i * nv, nv), s.sampling));
    v = verify_sampled(drafts, p, s.used == SpecMethod::kDraft ? std::span<const SparseDist>(s.q) : std::span<const SparseDist>{},
                       s.rng);
  } else {
    if (out.tokens.size() != k + 1) {
      return Status::Internal(fmt::format("speculative: {} argmax tokens for {} verified positions", out.tokens.size(), k + 1));
    }
    v = verify_greedy(drafts, out.tokens);
  }
  const uint32_t held = target_.length(seq);  // base + k + 1
  const uint32_t keep = held - k + v.accepted;
  TROVE_RETURN_IF_ERROR(target_.truncate(seq, keep));
  if (s.draft_seq && draft_) {
    const uint32_t dheld = draft_->length(*s.draft_seq);
    if (Status st = draft_->truncate(*s.draft_seq, std::min(dheld, keep)); !st.ok()) stop(s);
  }
  std::vector<int32_t> emitted(drafts.begin(), drafts.begin() + v.accepted);
  emitted.push_back(v.next);
  s.history.insert(s.history.end(), emitted.begin(), emitted.end());
  if (k > 0) {
    SpecCounters& c = s.used == SpecMethod::kDraft ? stats.draft : stats.lookup;
    c.drafted += k;
    c.accepted += v.accepted;
    ++c.steps;
    (s.used == SpecMethod::kDraft ? s.k_draft : s.k_lookup).update(k, v.accepted);
    if (s.used == SpecMethod::kDraft) costs_.drafted += k, costs_.accepted += v.accepted;
  }
  s.fed.clear();
  s.q.clear();
  return emitted;
}

}  // namespace trove::engine
