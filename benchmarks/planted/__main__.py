"""``python -m benchmarks.planted {train,check,data}`` from the repository root."""

from benchmarks.planted import main


raise SystemExit(main())
