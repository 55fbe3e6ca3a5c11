// How DCMTK's network conditions read to a person, shared by the DICOM network clients (the
// worklist C-FIND, the console C-STORE). Header-only: only modules that link DCMTK's dcmnet
// include it, so the base library itself does not depend on DCMTK.
#pragma once

#include <dcmtk/config/osconfig.h>  // must come before any other DCMTK header
#include <dcmtk/dcmnet/cond.h>
#include <dcmtk/dcmnet/dimse.h>

#include <string>

namespace ctagent::dcmnet {

// A condition's text on one line (DCMTK nests the TCP cause on a line of its own).
inline std::string OneLine(const OFCondition& cond) {
  std::string text = cond.text();
  for (std::size_t pos = text.find('\n'); pos != std::string::npos; pos = text.find('\n', pos)) {
    text.replace(pos, 1, "; ");
  }
  return text;
}

// Conditions that mean the peer could not be reached or the connection broke: worth a retry
// later, and reported as a network problem rather than a protocol one.
inline bool IsNetworkCondition(const OFCondition& cond) {
  if (cond == DIMSE_NODATAAVAILABLE || cond == DIMSE_RECEIVEFAILED || cond == DIMSE_SENDFAILED) return true;
  if (cond.module() != OFM_dcmnet) return false;
  switch (cond.code()) {
    case DULC_TCPINITERROR:
    case DULC_TCPIOERROR:
    case DULC_UNKNOWNHOST:
    case DULC_NETWORKCLOSED:
    case DULC_READTIMEOUT:
    case DULC_PEERABORTEDASSOCIATION:
    case DULC_REQUESTASSOCIATIONFAILED:
      return true;
    default:
      return false;
  }
}

}  // namespace ctagent::dcmnet
