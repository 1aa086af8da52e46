"""`python -m bigmodel_cli ...` is the same as `bigmodel ...` (and works under torchrun)."""

from bigmodel_cli.launch import main

if __name__ == "__main__":
    main()
