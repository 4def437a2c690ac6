"""``python -m workers.crm_sim``: see ``workers.crm_sim.serve``."""

from workers.crm_sim.serve import main

if __name__ == "__main__":
    main()
