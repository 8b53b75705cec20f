"""The demo: the headline experiment on the toy world (`experiment`: `run_demo`) and its report (`report`)."""
