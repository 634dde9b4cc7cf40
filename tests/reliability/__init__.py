"""The reliability suite: faults, bad input and hostile files (README: "What we promise")."""
