"""One reader per vendor (see formats.py). ``compile_kernels`` compiles the numba book kernels into their
on-disk cache: ``make setup`` runs it, so that a machine's first Tardis.dev or DBN MBO read does not pay
their compilation (12 s and 8 s on 2 cores; 0.4 s and 0.03 s once cached)."""

from __future__ import annotations


def compile_kernels() -> None:
    """Read a tiny Tardis.dev incremental_book_L2 file and a tiny DBN MBO file, which compiles (or loads) the
    kernels for exactly the types real files give them."""
    import tempfile
    from pathlib import Path

    import databento_dbn as dbn

    from tickray.sources import databento, tardis

    with tempfile.TemporaryDirectory() as d:
        l2 = Path(d) / "binance-futures_incremental_book_L2_2024-01-01_BTCUSDT.csv"
        # enough levels that the books' arrays grow too (their first size is 256 levels)
        snapshot = "".join(f"binance-futures,BTCUSDT,1,2,true,bid,{100 - i / 10},1.0\n" for i in range(300))
        l2.write_text("exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount\n" + snapshot
                      + "binance-futures,BTCUSDT,1,2,true,ask,101.0,1.0\nbinance-futures,BTCUSDT,3,4,false,bid,100.0,0.0\n")
        tardis.rebuild_incremental_book(l2, levels=10)
        t0 = 1_704_067_200_000_000_000
        md = dbn.Metadata(dataset="GLBX.MDP3", start=t0, stype_in=dbn.SType.RAW_SYMBOL,
                          stype_out=dbn.SType.INSTRUMENT_ID, schema=dbn.Schema.MBO, symbols=[], end=t0 + 1)
        last = int(dbn.F_LAST)
        records = [dbn.MBOMsg(1, 1, t0, 0, dbn.UNDEF_PRICE, 0, dbn.Action.CLEAR, dbn.Side.NONE, t0,
                              flags=last | int(dbn.F_SNAPSHOT))]
        records += [dbn.MBOMsg(1, 1, t0, i, (100 - i) * 10**9, 1, dbn.Action.ADD, dbn.Side.BID, t0, flags=last)
                    for i in range(1, 80)]  # past the 64 levels the arrays start with
        mbo = Path(d) / "glbx-mdp3-20240101.mbo.dbn"
        mbo.write_bytes(md.encode() + b"".join(bytes(r) for r in records))
        databento.read_dbn(mbo, levels=10)
