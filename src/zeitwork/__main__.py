from __future__ import annotations

from zeitwork.cli.main import main

if __name__ == "__main__":
    main()
