from .test_hypercalls import *
def test_dbg(arena):
    own = arena.attacker.p2m[1500]
    victim_mfn = arena.victim.p2m[12]
    for src, dst in [((victim_mfn, DOMID_SELF, 0), (own, DOMID_SELF, 0)), ((own, DOMID_SELF, 0), (own+0, DOMID_SELF, 64)), ((own, DOMID_SELF, 0), (victim_mfn, arena.victim.domid, 0))]:
        arena.write(arena.scratch, GNTTAB_COPY.pack(*src, *dst, 32, 0, 0))
        rc = arena.call("grant_table_op", G.GNTTABOP_copy, arena.scratch, 1)
        print("copy", rc, GNTTAB_COPY.unpack(arena.v.gmem.read(arena.scratch, 24))[8])
    assert 0
