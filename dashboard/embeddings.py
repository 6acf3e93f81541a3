"""The text model's embedding task in the dashboard: what its numbers mean, in plain words, and the page guard.

A classification Result says how often the quantized model picks the same class as FP32 (top-1,
agreement). The text model (all-MiniLM-L6-v2) picks no class: it places each sentence as a point
(an embedding), and its Result says how far quantization moved the points and whether the nearest
ones are still the nearest (``ptq_core.metrics.embedding_metrics``). The Overview draws its cards
from the words here; pages whose view needs classes (top-1 decisions, class logits) call
:func:`guard` and say why they do not apply. Formatting lives in :mod:`dashboard.labels`.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from ptq_core.metrics import KNN_K, NEAR_TIE_COSINE, RECALL_K

from . import labels

COSINE_HELP = ("For each evaluation sentence, the cosine between its quantized and its FP32 embedding (1 = the same "
               "direction); the mean over the sentences, and below it the lowest.")
NEIGHBOUR_HELP = ("Share of evaluation sentences whose nearest other sentence is the same one under the quantized "
                  "model as under FP32 (each model searched among its own embeddings). Under it: how many sentences' "
                  "nearest neighbour moved, and in brackets how many of those moves were near ties: the two nearest "
                  f"FP32 neighbours within {NEAR_TIE_COSINE:g} cosine of each other, which any small perturbation can "
                  "swap.")
RECALL_HELP = (f"Of each sentence's {RECALL_K} nearest other sentences under FP32, the share the quantized model also "
               f"ranks among its own {RECALL_K} nearest; the mean over the sentences.")
KNN_HELP = (f"Leave-one-out k-NN on the evaluation sentences: each sentence gets the topic most common among its "
            f"{KNN_K} nearest other sentences, and counts as right when that is its labeled topic. FP32 and quantized "
            "embeddings are scored the same way.")

EXPLANATION = f"""
**What an embedding is.** The text model reads a sentence and turns it into an *embedding*: 384 numbers that
place the sentence as a point, so that sentences with similar meaning land close together. Search, clustering
and duplicate finding all ask one question of these points: which ones are nearest? There are no classes here,
so quantization is judged by how far it moves the points and whether the nearest ones stay the nearest.

- **Cosine to FP32**: for each sentence, how closely its quantized point points the same way as its FP32 point
  (1 = exactly; the mean over the sentences, and the worst one).
- **Nearest-neighbour agreement**: the share of sentences whose closest other sentence is still the same one.
- **Recall@{RECALL_K}**: of each sentence's {RECALL_K} nearest sentences under FP32, the share still among its
  {RECALL_K} nearest after quantization.
- **k-NN topic accuracy** (labeled sentences only): each sentence is given the topic most common among its
  {KNN_K} nearest other sentences (leave-one-out on the evaluation sentences); FP32 and quantized side by side.

**Why a cosine of 0.99 can still move neighbours.** A cosine of 0.99 means each point turned by about 8 degrees.
Sentences on the same topic often sit closer together than that: in the default *sentences* set, the closest
and the second-closest other sentence differ in cosine by less than 0.01 for about one sentence in seven.
Every point moving a little is then enough to swap which one is nearest. Read cosine as "how much the points
moved", and neighbour agreement and recall as "whether it matters".
"""
# "one in seven": FP32 embeddings of the 622 evaluation sentences of "sentences" (seed 0), nearest minus
# second-nearest cosine below 0.01 for 15.4 % of them (median gap 0.036); measured 2026-12-02.


def guard(result: dict[str, Any], view: str, why: str) -> None:
    """Stop a page whose ``view`` needs classes when ``result`` is an embedding model's, saying ``why``."""
    if labels.is_embedding(result["metrics"]):
        st.info(f"**{view}** does not apply to the text model: {why} Its numbers are on the Overview: cosine to "
                "FP32, nearest-neighbour agreement, recall and k-NN topic accuracy.", icon=":material/info:")
        st.stop()


def explain() -> None:
    """The plain-words box on the Overview, open until the user closes it."""
    with st.expander("What these numbers mean for a text model", expanded=True, icon=":material/school:"):
        st.markdown(EXPLANATION)
