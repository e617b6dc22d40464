from crackseg.cli import main

if __name__ == "__main__":  # not when a Dask worker process, started by spawning, imports this module again
    raise SystemExit(main())
