// Delivery to the scanner console's DICOM node: one association per batch, C-STORE per file,
// C-ECHO for diagnostics. DCMTK's DcmSCU does the protocol; this file maps its conditions and
// DIMSE statuses to errors a technician can act on.
#include <vector>  // results.hpp uses std::vector without including it

#include "agent/results/results.hpp"

#include <dcmtk/config/osconfig.h>  // must come before any other DCMTK header
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmdata/dcxfer.h>
#include <dcmtk/dcmnet/cond.h>
#include <dcmtk/dcmnet/diutil.h>
#include <dcmtk/dcmnet/scu.h>
#include <dcmtk/oflog/logger.h>
#include <dcmtk/oflog/loglevel.h>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <map>
#include <string_view>

#include "base/dcmnet_support.hpp"
#include "base/dcmtk_logging.hpp"
#include "base/log.hpp"

namespace ctagent::results {
namespace {

using dcmnet::IsNetworkCondition;
using dcmnet::OneLine;

constexpr std::string_view kComponent = "results";
constexpr std::size_t kMaxPresentationContexts = 128;  // odd IDs 1..255 (PS3.8 9.3.2.2)

using dcmtk_support::QuietDcmtkLogging;

std::string NodeLabel(const ConsoleNode& node) {
  return "console " + node.called_ae + "@" + node.host + ":" + std::to_string(node.port);
}

std::string Hex16(std::uint16_t value) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "0x%04X", static_cast<unsigned>(value));
  return buf;
}

bool IsAcceptedStoreStatus(Uint16 status) {
  // Success, or the warnings PS3.4 B.2.3 defines for Storage: coercion of data elements
  // (B000), elements discarded (B006), data set does not match SOP class (B007). The
  // instance was stored in each case.
  return status == STATUS_Success || status == STATUS_STORE_Warning_CoercionOfDataElements ||
         status == STATUS_STORE_Warning_ElementsDiscarded || status == STATUS_STORE_Warning_DataSetDoesNotMatchSOPClass;
}

void Configure(DcmSCU& scu, const ConsoleNode& node) {
  // A console that stops answering mid-transfer fails the call instead of hanging delivery.
  dcmnet::ConfigureAssociation(scu, node.calling_ae, node.called_ae, node.host, node.port, node.timeout_s);
  // Lets DCMTK convert between uncompressed transfer syntaxes when the console accepted
  // a different one than the file's.
  scu.setDatasetConversionMode(OFTrue);
}

// Maps a failed initNetwork/negotiateAssociation to the error a technician sees.
Error AssociationError(const ConsoleNode& node, const OFCondition& cond) {
  const std::string reason = OneLine(cond);
  if (cond == DUL_ASSOCIATIONREJECTED) {
    return Error(ErrorKind::kProtocol, NodeLabel(node) + " rejected the association from calling AE '" +
                                           node.calling_ae + "' to called AE '" + node.called_ae + "' (" + reason +
                                           "); check that the console's AE title is really '" + node.called_ae +
                                           "' and that the console accepts calling AE '" + node.calling_ae + "'",
                 FailureClass::kEndpoint);  // a configuration to fix, not a retry
  }
  if (cond == NET_EC_NoAcceptablePresentationContexts) {
    return Error(ErrorKind::kProtocol,
                 NodeLabel(node) + " accepted none of the proposed SOP classes and transfer "
                                   "syntaxes; check the console's storage configuration",
                 FailureClass::kEndpoint);
  }
  if (IsNetworkCondition(cond)) {
    return Error(ErrorKind::kNetwork, NodeLabel(node) + " is not reachable: " + reason +
                                          "; is the console's DICOM node running?");
  }
  return Error(ErrorKind::kProtocol, "association with " + NodeLabel(node) + " failed: " + reason);
}

Status Connect(DcmSCU& scu, const ConsoleNode& node) {
  OFCondition cond = scu.initNetwork();
  if (cond.bad()) {
    return MakeError(ErrorKind::kInternal, "cannot initialise DICOM networking for " + NodeLabel(node) + ": " +
                                               OneLine(cond));
  }
  cond = scu.negotiateAssociation();
  if (cond.bad()) return MakeError(AssociationError(node, cond));
  return Ok();
}

struct FileSyntax {
  std::string sop_class_uid;
  std::string transfer_syntax_uid;
};

// Reads only the meta header: enough to plan presentation contexts without loading pixels.
Expected<FileSyntax> ReadFileSyntax(const std::filesystem::path& path) {
  DcmFileFormat file;
  const OFCondition cond =
      file.loadFile(OFFilename(path.c_str()), EXS_Unknown, EGL_noChange, DCM_MaxReadLength, ERM_metaOnly);
  if (cond.bad()) {
    return MakeError(ErrorKind::kIo, "cannot read DICOM file " + path.string() + " for delivery: " + OneLine(cond));
  }
  FileSyntax syntax;
  OFString value;
  if (file.getMetaInfo()->findAndGetOFString(DCM_MediaStorageSOPClassUID, value).good()) {
    syntax.sop_class_uid = value.c_str();
  }
  if (file.getMetaInfo()->findAndGetOFString(DCM_TransferSyntaxUID, value).good()) {
    syntax.transfer_syntax_uid = value.c_str();
  }
  if (syntax.sop_class_uid.empty() || syntax.transfer_syntax_uid.empty()) {
    return MakeError(ErrorKind::kCorrupt, "DICOM file " + path.string() +
                                              " has no SOP class or transfer syntax in its meta header; "
                                              "it cannot be sent by C-STORE");
  }
  return syntax;
}

}  // namespace

Expected<DeliveryReport> DeliverToConsole(const ConsoleNode& node, const std::vector<std::filesystem::path>& files) {
  QuietDcmtkLogging();
  DeliveryReport report;
  if (files.empty()) return report;

  // Plan: the SOP class and transfer syntax of every file, and per SOP class the transfer
  // syntaxes to propose. Uncompressed little endian is always proposed so any console can
  // accept; a file's own other syntax gets a context of its own so it is sent unchanged when
  // the console takes it. Each SOP class has contexts of its own, so a console that refuses
  // one class (often SR or SEG) still accepts the others.
  std::vector<FileSyntax> syntaxes;
  syntaxes.reserve(files.size());
  std::map<std::string, std::set<std::string>> other_syntaxes_by_class;
  for (const auto& path : files) {
    Expected<FileSyntax> syntax = ReadFileSyntax(path);
    if (!syntax) return MakeError(syntax.error());
    auto& others = other_syntaxes_by_class[syntax->sop_class_uid];
    if (syntax->transfer_syntax_uid != UID_LittleEndianExplicitTransferSyntax &&
        syntax->transfer_syntax_uid != UID_LittleEndianImplicitTransferSyntax) {
      others.insert(syntax->transfer_syntax_uid);
    }
    syntaxes.push_back(std::move(*syntax));
  }

  DcmSCU scu;
  Configure(scu, node);
  std::size_t contexts = 0;
  for (const auto& [sop_class, others] : other_syntaxes_by_class) {
    for (const auto& ts : others) {
      OFList<OFString> list;
      list.push_back(ts.c_str());
      scu.addPresentationContext(sop_class.c_str(), list);
      ++contexts;
    }
    OFList<OFString> uncompressed;
    uncompressed.push_back(UID_LittleEndianExplicitTransferSyntax);
    uncompressed.push_back(UID_LittleEndianImplicitTransferSyntax);
    scu.addPresentationContext(sop_class.c_str(), uncompressed);
    ++contexts;
  }
  if (contexts > kMaxPresentationContexts) {
    return MakeError(ErrorKind::kInvalidInput,
                     "cannot send " + std::to_string(files.size()) + " files to " + NodeLabel(node) +
                         " in one association: they need " + std::to_string(contexts) +
                         " presentation contexts, more than DICOM's 128; send them in smaller batches");
  }

  Status connected = Connect(scu, node);
  if (!connected) return MakeError(connected.error());

  for (const auto& [sop_class, others] : other_syntaxes_by_class) {
    (void)others;
    if (scu.findAnyPresentationContextID(sop_class.c_str(), UID_LittleEndianExplicitTransferSyntax) == 0 &&
        scu.findAnyPresentationContextID(sop_class.c_str(), UID_LittleEndianImplicitTransferSyntax) == 0) {
      bool any = false;
      for (const auto& ts : others) any = any || scu.findAnyPresentationContextID(sop_class.c_str(), ts.c_str()) != 0;
      if (!any) report.refused_sop_classes.push_back(sop_class);
    }
  }

  for (std::size_t i = 0; i < files.size(); ++i) {
    const auto& path = files[i];
    const auto& syntax = syntaxes[i];
    const T_ASC_PresentationContextID pc =
        scu.findAnyPresentationContextID(syntax.sop_class_uid.c_str(), syntax.transfer_syntax_uid.c_str());
    if (pc == 0) {
      const char* name = dcmFindNameOfUID(syntax.sop_class_uid.c_str(), syntax.sop_class_uid.c_str());
      report.refused.push_back({path, syntax.sop_class_uid,
                                NodeLabel(node) + " did not accept SOP class " + std::string(name) + " (" +
                                    syntax.sop_class_uid + ") needed for " + path.filename().string() +
                                    "; check the console's storage configuration"});
      continue;
    }
    Uint16 status = 0;
    const OFCondition cond = scu.sendSTORERequest(pc, OFFilename(path.c_str()), nullptr, status);
    if (cond.bad()) {
      // The association is no longer usable (timeout, reset, abort): stop and let the caller
      // retry the batch later.
      (void)scu.abortAssociation();
      return MakeError(IsNetworkCondition(cond) ? ErrorKind::kNetwork : ErrorKind::kProtocol,
                       "C-STORE of " + path.string() + " (file " + std::to_string(i + 1) + " of " +
                           std::to_string(files.size()) + ") to " + NodeLabel(node) + " failed: " + OneLine(cond));
    }
    if (!IsAcceptedStoreStatus(status)) {
      report.refused.push_back({path, syntax.sop_class_uid,
                                NodeLabel(node) + " refused " + path.string() + ": C-STORE status " + Hex16(status) +
                                    " (" + DU_cstoreStatusString(status) + ")"});
      continue;
    }
    if (status != STATUS_Success) {
      log::Warn(kComponent, "console stored " + path.string() + " with warning status " + Hex16(status) + " (" +
                                DU_cstoreStatusString(status) + ")");
    }
    report.delivered.push_back(path);
  }

  const OFCondition released = scu.releaseAssociation();
  if (released.bad()) {
    // Every response was already received; a failed release loses nothing.
    log::Debug(kComponent, "release of the association with " + NodeLabel(node) + " failed: " + OneLine(released));
  }
  return report;
}

Status SendToConsole(const ConsoleNode& node, const std::vector<std::filesystem::path>& files) {
  Expected<DeliveryReport> report = DeliverToConsole(node, files);
  if (!report) return MakeError(report.error());
  if (!report->refused.empty()) {
    std::string message = report->refused.front().reason;
    if (report->refused.size() > 1) {
      message += " (and " + std::to_string(report->refused.size() - 1) + " more of " + std::to_string(files.size()) +
                 " files failed)";
    }
    return MakeError(ErrorKind::kProtocol, message);
  }
  return Ok();
}

Status EchoConsole(const ConsoleNode& node) {
  QuietDcmtkLogging();
  DcmSCU scu;
  Configure(scu, node);
  OFList<OFString> syntaxes;
  syntaxes.push_back(UID_LittleEndianImplicitTransferSyntax);
  scu.addPresentationContext(UID_VerificationSOPClass, syntaxes);
  Status connected = Connect(scu, node);
  if (!connected) return connected;
  const OFCondition cond = scu.sendECHORequest(0);
  if (cond.bad()) {
    (void)scu.abortAssociation();
    return MakeError(IsNetworkCondition(cond) ? ErrorKind::kNetwork : ErrorKind::kProtocol,
                     "C-ECHO to " + NodeLabel(node) + " failed: " + OneLine(cond));
  }
  (void)scu.releaseAssociation();
  return Ok();
}

}  // namespace ctagent::results
