"""`python -m medcad ...`: the command line (also how torchrun and Lightning's launcher start each process)."""

from medcad.cli import main

if __name__ == "__main__":
    main()
