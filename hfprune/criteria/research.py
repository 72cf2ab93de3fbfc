"""The research criteria (expressiveness, hybrid, elimination-compensation, relative importance) register here."""
