"""The default run's data: ADE-style sentences the project writes itself (no download needed).

Sentences mention a drug and a medical condition; label 1 when the drug caused the condition (an
adverse drug event), 0 when the drug treated it or the sentence is unrelated. Hard negatives use
the same words as positives, and a small share of labels is flipped so no model reaches 100%.
"""

from __future__ import annotations

import random
from pathlib import Path

from litdistill.core.io import atomic_write_csv, atomic_write_text

DRUGS = [
    "methotrexate",
    "amiodarone",
    "lithium",
    "cisplatin",
    "isoniazid",
    "warfarin",
    "clozapine",
    "vancomycin",
    "carbamazepine",
    "prednisone",
    "metformin",
    "rifampicin",
    "tacrolimus",
    "heparin",
    "allopurinol",
    "ciprofloxacin",
    "valproate",
    "cyclosporine",
    "phenytoin",
    "doxorubicin",
]
CONDITIONS = [
    "hepatotoxicity",
    "pneumonitis",
    "hypothyroidism",
    "renal failure",
    "peripheral neuropathy",
    "thrombocytopenia",
    "agranulocytosis",
    "ototoxicity",
    "Stevens-Johnson syndrome",
    "lactic acidosis",
    "pancreatitis",
    "seizures",
    "cardiomyopathy",
    "rhabdomyolysis",
    "hyponatremia",
    "rash",
]
INDICATIONS = [
    "rheumatoid arthritis",
    "atrial fibrillation",
    "bipolar disorder",
    "tuberculosis",
    "epilepsy",
    "deep vein thrombosis",
    "schizophrenia",
    "type 2 diabetes",
    "gout",
    "asthma",
    "kidney transplantation",
]
POSITIVE = [
    "{drug}-induced {cond} in a patient treated for {ind}.",
    "A {age}-year-old woman developed {cond} after starting {drug}.",
    "We report a case of {cond} associated with {drug} therapy.",
    "{cond} resolved after withdrawal of {drug}, which had been given for {ind}.",
    "Severe {cond} occurred during treatment with {drug}.",
    "The patient's {cond} was attributed to {drug} toxicity.",
    "Rechallenge with {drug} caused recurrence of {cond}.",
]
NEGATIVE = [
    "{drug} was effective in controlling {ind}.",
    "A {age}-year-old man with {ind} was started on {drug}.",
    "{drug} is commonly used to treat {ind}.",
    "No {cond} was observed during {drug} treatment for {ind}.",
    "{cond} was present before {drug} was started and did not change.",
    "The patient was screened for {cond} before receiving {drug}.",
    "{drug} levels were monitored weekly in patients with {ind}.",
    "Patients with {cond} were excluded from the {drug} trial.",
]


def make_sentence(rng: random.Random, label: int) -> str:
    template = rng.choice(POSITIVE if label else NEGATIVE)
    text = template.format(
        drug=rng.choice(DRUGS), cond=rng.choice(CONDITIONS), ind=rng.choice(INDICATIONS), age=rng.randint(18, 90)
    )
    return text[0].upper() + text[1:]


def make_drug_event_dataset(
    out_dir: str,
    n_train: int = 2000,
    n_val: int = 400,
    n_test: int = 600,
    positive_rate: float = 0.4,
    label_noise: float = 0.04,
    seed: int = 0,
) -> dict[str, str]:
    """Write train/validation/test CSVs (``text,label``) with no sentence shared across splits."""
    rng = random.Random(seed)
    seen: set[str] = set()
    paths = {}
    for split, n in (("train", n_train), ("validation", n_val), ("test", n_test)):
        rows = []
        while len(rows) < n:
            label = int(rng.random() < positive_rate)
            text = make_sentence(rng, label)
            if text in seen:
                continue
            seen.add(text)
            rows.append((text, 1 - label if rng.random() < label_noise else label))
        path = Path(out_dir) / f"{split}.csv"
        atomic_write_csv(path, ["text", "label"], rows)
        paths[split] = str(path)
    return paths


SFT_PROMPTS = [
    ("What adverse effect is {drug} known for?", "{drug} can cause {cond}."),
    ("Name a drug that can cause {cond}.", "{drug} is one drug that can cause {cond}."),
    ("What is {drug} used to treat?", "{drug} is used to treat {ind}."),
    ("Should {drug} be stopped if {cond} develops?", "Yes. If {cond} develops on {drug}, stop {drug} and review."),
]


def make_sft_dataset(
    out_dir: str, n_train: int = 400, n_val: int = 50, n_test: int = 50, seed: int = 0
) -> dict[str, str]:
    """Write prompt/response JSONL splits of short drug-safety questions (the tiny causal recipe)."""
    import json

    rng = random.Random(seed)
    paths = {}
    for split, n in (("train", n_train), ("validation", n_val), ("test", n_test)):
        lines = []
        for _ in range(n):
            prompt, response = rng.choice(SFT_PROMPTS)
            words = {"drug": rng.choice(DRUGS), "cond": rng.choice(CONDITIONS), "ind": rng.choice(INDICATIONS)}
            lines.append(json.dumps({"prompt": prompt.format(**words), "response": response.format(**words)}))
        paths[split] = str(atomic_write_text(Path(out_dir) / f"{split}.jsonl", "\n".join(lines) + "\n"))
    return paths
