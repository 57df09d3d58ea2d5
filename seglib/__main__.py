from seglib.quiet import sigterm_to_main_thread

with sigterm_to_main_thread():  # OpenBLAS' and OpenCV's threads start as the CLI's modules load
    from seglib.cli import main

if __name__ == "__main__":  # not when a run process (multiprocessing spawn) imports it
    raise SystemExit(main())
