"""``python -m gradfix_hf.integrations.mergekit``: the ``gradfix-mergekit-yaml`` command."""
from .command import main

if __name__ == "__main__":
    raise SystemExit(main())
