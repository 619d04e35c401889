"""Demo tooling, kept apart from the library: synthetic data in the competition layout, the tiny
offline Chinese-CLIP model and the ``make demo`` run."""
