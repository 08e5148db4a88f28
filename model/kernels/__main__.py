"""python -m model.kernels: build the CPU kernels now and say whether they run here."""

from model.kernels import main

raise SystemExit(main())
