from seglib.cli import main

if __name__ == "__main__":  # not when a run process (multiprocessing spawn) imports it
    raise SystemExit(main())
