"""``python -m gradfix_hf`` (also what ``accelerate launch -m gradfix_hf`` runs)."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
