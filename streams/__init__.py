"""Stream stages of surge: a shared runtime and one package per stage, each with a pure core."""
