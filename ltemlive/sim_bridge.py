"""Turn a simulator run into an ltemlive Series (with its ground truth). The only place the service's
data model meets the simulator; the reconstructor itself never imports the simulator."""

from __future__ import annotations

from ltemlive.optics.params import MicroscopeParams
from ltemlive.series import GroundTruth, Series
from simulator.series import SimulatedSeries, SimulationConfig, simulate_series


def microscope_of(cfg: SimulationConfig) -> MicroscopeParams:
    return MicroscopeParams(
        voltage_v=cfg.voltage_v,
        cs_m=cfg.cs_m,
        theta_c_rad=cfg.theta_c_rad,
        focal_spread_m=cfg.focal_spread_m,
        astig_m=abs(cfg.astig_m),
        astig_azimuth_rad=cfg.astig_azimuth_rad,
    )


def series_from_simulation(sim: SimulatedSeries) -> Series:
    cfg = sim.config
    return Series(
        images=sim.images,
        defocus_m=sim.defocus_nominal_m,
        pixel_size_m=sim.pixel_size_m,
        microscope=microscope_of(cfg),
        dose_e_per_px=cfg.dose_e_per_px if cfg.gain == 1.0 else None,
        truth=GroundTruth(
            phase=sim.phase, amplitude=sim.amplitude, defocus_m=sim.defocus_true_m, shifts_px=sim.shifts_px
        ),
        metadata={"source": "simulator", "simulation": cfg.model_dump(mode="json")},
    )


def simulate(cfg: SimulationConfig) -> Series:
    return series_from_simulation(simulate_series(cfg))
