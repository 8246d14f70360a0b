// dsv3 pipeline-sim --schedule S --pp P --micro-batches M --f F --b B --w W [--fb T] [--comm C]
//                   [--scale X] [--png FILE] [--table]
// Generates a pipeline-parallel schedule (src/parallel/schedule.h), times it with the given
// per-stage costs (src/parallel/pipeline_sim.h) and prints each rank's timeline, bubble, peak
// activations and parameters beside the DualPipe README's formulas; --table prints that
// README's comparison for PP 4, 8, 16. docs/pipeline.md.
#include <CLI/CLI.hpp>

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "commands.h"
#include "core/check.h"
#include "parallel/pipeline_sim.h"

namespace dsv3::cli {

namespace {

using pipe::Op;
using pipe::OpType;
using pipe::ScheduleKind;

struct PipeArgs {
  std::string schedule = "dualpipe", png;
  int pp = 8, micro_batches = 20;
  double f = 1, b = 2, w = 1, fb = 0, comm = 0, scale = 0;
  bool table = false;
};

std::string num(double v) { return str_cat(std::round(v * 1e9) / 1e9); }  // no 5.9999999

const char* formula_text(ScheduleKind k) {
  switch (k) {
    case ScheduleKind::OneF1B: return "(PP-1)(F+B)";
    case ScheduleKind::ZB1P: return "(PP-1)(F+B-2W)";
    case ScheduleKind::DualPipe:
    case ScheduleKind::DualPipeV: return "(PP/2-1)(F&B+B-3W)";
  }
  return "?";
}

// A Gantt cell label: the op letter (F forward, B full backward, I input-gradient backward,
// W weight gradient; lower case on chunk 1) and the micro-batch; "F3+b12" for an F&B pair.
std::string cell_label(const Op& op) {
  auto one = [](OpType t, bool split, int mb, int chunk) {
    char c = t == OpType::F ? 'F' : t == OpType::W ? 'W' : split ? 'I' : 'B';
    if (chunk == 1) c = char(std::tolower(uint8_t(c)));
    return c + std::to_string(mb);
  };
  if (op.type == OpType::FB)
    return one(OpType::F, false, op.mb, op.chunk) + "+" + one(OpType::B, op.split2, op.mb2, op.chunk2);
  return one(op.type, op.split, op.mb, op.chunk);
}

void print_timeline(const pipe::Schedule& s, const pipe::SimResult& r, const pipe::SimCosts& c,
                    double scale) {
  constexpr double kMaxWidth = 400;  // characters; wider timelines shrink and cut labels
  if (scale <= 0) {
    // The least characters per time unit that fit every op's label and one '-' in its block,
    // so that neighbouring blocks stay apart.
    for (const auto& ops : s.ops)
      for (const Op& op : ops)
        if (pipe::op_cost(op, c) > 0)
          scale = std::max(scale, double(cell_label(op).size() + 1) / pipe::op_cost(op, c));
    scale = std::max(1.0, std::ceil(scale));
    if (r.makespan * scale > kMaxWidth) {
      scale = kMaxWidth / r.makespan;
      if (scale >= 1) scale = std::floor(scale);
    }
  }
  DSV3_CHECK(r.makespan * scale <= 100000, "--scale ", scale, ": the timeline would be ",
             r.makespan * scale, " characters wide");
  std::printf("timeline, %s characters per time unit: each op is its label then '-' to its end;\n"
              "  F forward, B full backward, I input-gradient backward, W weight gradient, then the\n"
              "  micro-batch; lower case: chunk 1; X+Y: an overlapped F&B pair; '.': idle\n",
              num(scale).c_str());
  const size_t width = size_t(std::lround(r.makespan * scale));
  for (int rank = 0; rank < s.pp; ++rank) {
    std::string row(width, '.');
    for (const pipe::SimOp& so : r.timeline[size_t(rank)]) {
      const size_t c0 = size_t(std::lround(so.start * scale)), c1 = size_t(std::lround(so.end * scale));
      const std::string label = cell_label(so.op);
      for (size_t i = c0; i < c1 && i < width; ++i) row[i] = i - c0 < label.size() ? label[i - c0] : '-';
    }
    std::printf("rank %2d |%s|\n", rank, row.c_str());
  }
}

void print_summary(const pipe::Schedule& s, const pipe::SimResult& r, const pipe::SimCosts& c) {
  std::printf("\nrank      busy      idle  peak activations (micro-batch stages)\n");
  for (int rank = 0; rank < s.pp; ++rank)
    std::printf("%4d %9s %9s  %d\n", rank, num(r.busy[size_t(rank)]).c_str(),
                num(r.bubble[size_t(rank)]).c_str(), r.peak_chunks[size_t(rank)]);
  const int PP = s.n_stages;
  const std::string why = pipe::formula_conditions(s, c);
  std::printf("\nmakespan %s\n", num(r.makespan).c_str());
  std::printf("bubble (idle time, max over ranks): %s simulated, %s by the README formula %s with PP = %d stages\n",
              num(r.bubble_max).c_str(), num(pipe::formula_bubble(s.kind, PP, c)).c_str(),
              formula_text(s.kind), PP);
  if (why.empty())
    std::printf("  the formula's assumptions hold here, so the two agree exactly\n");
  else
    std::printf("  the formula is not exact here: %s\n", why.c_str());
  std::printf("activations: peak %d micro-batch stages per rank (README: %d) = %s in units of one stage of a\n"
              "  %d-stage 1F1B on the same %d ranks\n",
              r.peak_chunks_max, pipe::formula_activations(s.kind, PP),
              num(r.peak_activations).c_str(), s.pp, s.pp);
  std::printf("parameters: %d stage%s per rank (README: %dx); %s\n", s.chunks, s.chunks == 1 ? "" : "s",
              pipe::formula_param_stages(s.kind),
              r.param_copies == 2 ? "each stage on 2 ranks: 2 copies of the model, mirrored gradients summed"
                                  : "each stage on one rank: 1 copy of the model");
}

// The README's comparison at the same number of stages PP: DualPipeV runs on PP/2 ranks.
void print_table(const pipe::SimCosts& c) {
  std::printf("Pipeline bubbles and memory per device, simulated beside the DualPipe README's formulas\n"
              "costs per stage: F=%s B=%s W=%s F&B=%s comm=%s; micro-batches M = 4*PP; PP = stages\n"
              "(DualPipeV runs PP stages on PP/2 ranks); parameters in stages per rank, activations\n"
              "in micro-batch stages per rank; exact: whether the formula's assumptions hold\n\n",
              num(c.F).c_str(), num(c.B).c_str(), num(c.W).c_str(), num(pipe::fb_cost(c)).c_str(),
              num(c.comm).c_str());
  std::printf("%3s  %-10s %5s  %-19s %9s %9s  %5s  %6s %6s  %6s %6s\n", "PP", "schedule", "ranks",
              "bubble formula", "simulated", "formula", "exact", "params", "README", "activ", "README");
  for (int PP : {4, 8, 16}) {
    for (ScheduleKind k : {ScheduleKind::OneF1B, ScheduleKind::ZB1P, ScheduleKind::DualPipe,
                           ScheduleKind::DualPipeV}) {
      const int ranks = k == ScheduleKind::DualPipeV ? PP / 2 : PP;
      const pipe::Schedule s = pipe::make_schedule(k, ranks, 4 * PP);
      const pipe::SimResult r = pipe::simulate(s, c);
      std::printf("%3d  %-10s %5d  %-19s %9s %9s  %5s  %5dx %5dx  %6d %6d\n", PP,
                  pipe::schedule_name(k), ranks, formula_text(k), num(r.bubble_max).c_str(),
                  num(pipe::formula_bubble(k, PP, c)).c_str(),
                  pipe::formula_conditions(s, c).empty() ? "yes" : "no", s.chunks,
                  pipe::formula_param_stages(k), r.peak_chunks_max, pipe::formula_activations(k, PP));
    }
  }
}

// F blue, full B red, input-gradient B orange, W green, darker on chunk 1; F&B purple.
int op_colour(const Op& op) {
  const bool c1 = op.chunk == 1;
  switch (op.type) {
    case OpType::F: return c1 ? 0x3182bd : 0x9ecae1;
    case OpType::B: return op.split ? (c1 ? 0xe6550d : 0xfdae6b) : (c1 ? 0xde2d26 : 0xfc9272);
    case OpType::W: return c1 ? 0x31a354 : 0xa1d99b;
    case OpType::FB: return 0xbcbddc;
  }
  return 0;
}

// The timeline as a PNG through gnuplot: one bar per op, coloured by kind, labelled as in the
// text timeline.
void write_png(const pipe::Schedule& s, const pipe::SimResult& r, const pipe::SimCosts& c,
               const std::string& png) {
  DSV3_CHECK(png.find('\'') == std::string::npos, "--png: the file name ", png, " has a quote");
  DSV3_CHECK(std::system("command -v gnuplot >/dev/null 2>&1") == 0,
             "--png needs gnuplot, which is not installed (Debian: apt-get install -y gnuplot-nox)");
  char dir_template[] = "/tmp/dsv3-pipeline-XXXXXX";
  DSV3_CHECK(mkdtemp(dir_template) != nullptr, "--png: cannot create a temporary directory in /tmp");
  const std::filesystem::path dir = dir_template;
  const std::string data = (dir / "ops.tsv").string(), script = (dir / "plot.gp").string();
  {
    std::ofstream f(data);
    for (int rank = 0; rank < s.pp; ++rank) {
      for (const pipe::SimOp& so : r.timeline[size_t(rank)]) {
        const Op& op = so.op;
        const int rgb = op_colour(op);
        f << rank << '\t' << so.start << '\t' << so.end << '\t' << cell_label(op) << '\t' << rgb << '\n';
      }
    }
  }
  {
    std::ofstream g(script);
    g << "set terminal pngcairo size " << std::clamp(int(r.makespan * 30), 800, 4000) << ","
      << 120 + 40 * s.pp << " font \",9\" noenhanced\n"
      << "set output '" << png << "'\n"
      << "set datafile separator \"\\t\"\n"
      << "set title \"" << pipe::schedule_name(s.kind) << ": " << s.pp << " ranks, " << s.n_stages
      << " stages, " << s.micro_batches << " micro-batches; F=" << num(c.F) << " B=" << num(c.B)
      << " W=" << num(c.W) << " F&B=" << num(pipe::fb_cost(c)) << " comm=" << num(c.comm)
      << "; bubble " << num(r.bubble_max) << "\"\n"
      << "set xlabel 'time'\nset ylabel 'rank'\nset ytics 1\nset key outside right top\n"
      << "set xrange [0:" << r.makespan << "]\nset yrange [" << s.pp - 0.5 << ":-0.5]\n"
      << "set style fill solid 1.0 border lc rgb 'black'\n"
      << "plot '" << data << "' using (($2+$3)/2):1:(($3-$2)/2):(0.4):5 with boxxyerror lc rgb variable notitle, \\\n"
      << "     '" << data << "' using (($2+$3)/2):1:4 with labels font \",7\" notitle";
    const std::pair<Op, const char*> legend[] = {
        {Op{OpType::F, 0, 0}, "F forward"},        {Op{OpType::F, 0, 1}, "f (chunk 1)"},
        {Op{OpType::B, 0, 0}, "B full backward"},  {Op{OpType::B, 0, 1}, "b (chunk 1)"},
        {Op{OpType::B, 0, 0, true}, "I input grad"}, {Op{OpType::B, 0, 1, true}, "i (chunk 1)"},
        {Op{OpType::W, 0, 0}, "W weight grad"},    {Op{OpType::W, 0, 1}, "w (chunk 1)"},
        {Op{OpType::FB, 0, 0}, "F&B pair"}};
    for (const auto& [op, title] : legend) {
      const int colour = op_colour(op);
      bool used = false;  // a legend entry only for the kinds of op this schedule has
      for (const auto& ops : s.ops)
        for (const Op& o : ops) used = used || op_colour(o) == colour;
      if (!used) continue;
      char hex[8];
      std::snprintf(hex, sizeof hex, "%06x", colour);
      g << ", \\\n     keyentry with boxes fs solid fc rgb '#" << hex << "' title '" << title << "'";
    }
    g << "\n";
  }
  const int rc = std::system(("gnuplot '" + script + "'").c_str());
  std::filesystem::remove_all(dir);
  DSV3_CHECK(rc == 0, "--png: gnuplot failed writing ", png);
  std::printf("wrote %s\n", png.c_str());
}

void run_pipeline_sim(const PipeArgs& a) {
  pipe::SimCosts c;
  c.F = a.f;
  c.B = a.b;
  c.W = a.w;
  c.FB = a.fb;
  c.comm = a.comm;
  if (a.table) {
    print_table(c);
    return;
  }
  const pipe::Schedule s = pipe::make_schedule(pipe::parse_schedule(a.schedule), a.pp, a.micro_batches);
  pipe::validate(s);
  const pipe::SimResult r = pipe::simulate(s, c);
  std::printf("%s: %d ranks, %d stages, %d micro-batches; costs per stage F=%s B=%s W=%s F&B=%s comm=%s\n",
              pipe::schedule_name(s.kind), s.pp, s.n_stages, s.micro_batches, num(c.F).c_str(),
              num(c.B).c_str(), num(c.W).c_str(), num(pipe::fb_cost(c)).c_str(), num(c.comm).c_str());
  print_timeline(s, r, c, a.scale);
  print_summary(s, r, c);
  if (!a.png.empty()) write_png(s, r, c, a.png);
}

}  // namespace

void register_pipeline_sim(CLI::App& app) {
  auto a = std::make_shared<PipeArgs>();
  CLI::App* c = app.add_subcommand(
      "pipeline-sim", "Generate and time a pipeline-parallel schedule (1F1B, ZB1P, DualPipe, DualPipeV)");
  c->add_option("--schedule", a->schedule, "1f1b, zb1p, dualpipe or dualpipev")->capture_default_str();
  c->add_option("--pp", a->pp, "Pipeline ranks (DualPipeV: 2*pp stages on pp ranks)")->capture_default_str();
  c->add_option("--micro-batches", a->micro_batches, "Micro-batches per step")->capture_default_str();
  c->add_option("--f", a->f, "Forward time of one stage")->capture_default_str();
  c->add_option("--b", a->b, "Full backward time of one stage (input and weight gradients)")->capture_default_str();
  c->add_option("--w", a->w, "Weight-gradient part of --b")->capture_default_str();
  c->add_option("--fb", a->fb, "Time of an overlapped forward & backward pair (default F+B)");
  c->add_option("--comm", a->comm, "Delay of every transfer between ranks")->capture_default_str();
  c->add_option("--scale", a->scale, "Characters per time unit in the timeline (default: fit the labels)");
  c->add_option("--png", a->png, "Also draw the timeline to this PNG (needs gnuplot)");
  c->add_flag("--table", a->table,
              "Print the README comparison (bubble, parameters, activations) for PP 4, 8, 16 instead");
  c->callback([a] { run_pipeline_sim(*a); });
}

}  // namespace dsv3::cli
