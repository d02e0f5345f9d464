#pragma once
// The loss curve of a run as a self-contained SVG (no fonts, scripts or images to fetch), so a
// run directory can be looked at in any browser without Python.
#include <filesystem>
#include <nlohmann/json.hpp>
#include <vector>

namespace lmf {

// An 800x500 line chart, x = "step", linear y = loss, from metrics records (read_metrics):
//  - records with "train_loss": a thin line, plus a thicker EMA-smoothed line;
//  - records with "val_loss": a line with markers.
// Records without a numeric "step", and NaN / infinite / null losses, are skipped; when a resumed
// run logged a step twice, the later record wins. Written atomically (tmp + rename).
void write_loss_plot(const std::vector<nlohmann::json>& metrics,
                     const std::filesystem::path& out_svg);

// The SVG text itself (for tests and for callers that embed it).
std::string loss_plot_svg(const std::vector<nlohmann::json>& metrics);

}  // namespace lmf
